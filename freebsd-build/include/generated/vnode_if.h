/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * The vnode operations xbbd.ko uses (FreeBSD's sys/kern/vnode_if.src, as FreeBSD's build
 * generates it with vnode_if.awk), written for the Linux build of xen-freebsd-rs, whose
 * FreeBSD headers (PyPI ziglang) lack build-generated files. sys/vnode.h includes this file;
 * it compiles with none of the operations declared, so only the ones a shim calls are here.
 * The native FreeBSD build uses the real generated header (the kernel build directory's, or
 * the one modules/Makefile.inc lists in SRCS).
 *
 * For each operation, as in FreeBSD 14's generated header: the argument structure (the
 * generic part first, then the arguments in vnode_if.src's order), the descriptor the kernel
 * defines, the dispatching function the kernel exports (VOP_<NAME>_APV, which walks the
 * vnode's operations vector), and the inline that fills the arguments. The generated inline
 * calls the filesystem's method directly when neither INVARIANTS nor KTR is configured and
 * DTrace probes are off, and VOP_<NAME>_APV otherwise; this one always calls
 * VOP_<NAME>_APV, which is correct in every kernel configuration (it is the path INVARIANTS
 * kernels take) and needs no definition of struct vop_vector.
 */
#ifndef _XENRS_VNODE_IF_H_
#define _XENRS_VNODE_IF_H_

extern struct vnodeop_desc vop_default_desc;

/* vop_unlock: vp locked on entry, unlocked on return. */
struct vop_unlock_args {
	struct vop_generic_args a_gen;
	struct vnode *a_vp;
};

extern struct vnodeop_desc vop_unlock_desc;

int	VOP_UNLOCK_APV(const struct vop_vector *vop, struct vop_unlock_args *);

static __inline int
VOP_UNLOCK(struct vnode *vp)
{
	struct vop_unlock_args a;

	a.a_gen.a_desc = &vop_unlock_desc;
	a.a_vp = vp;
	return (VOP_UNLOCK_APV(vp->v_op, &a));
}

/* vop_fsync: vp locked (exclusively) around the call. */
struct vop_fsync_args {
	struct vop_generic_args a_gen;
	struct vnode *a_vp;
	int a_waitfor;
	struct thread *a_td;
};

extern struct vnodeop_desc vop_fsync_desc;

int	VOP_FSYNC_APV(const struct vop_vector *vop, struct vop_fsync_args *);

static __inline int
VOP_FSYNC(struct vnode *vp, int waitfor, struct thread *td)
{
	struct vop_fsync_args a;

	a.a_gen.a_desc = &vop_fsync_desc;
	a.a_vp = vp;
	a.a_waitfor = waitfor;
	a.a_td = td;
	return (VOP_FSYNC_APV(vp->v_op, &a));
}

#endif /* !_XENRS_VNODE_IF_H_ */
