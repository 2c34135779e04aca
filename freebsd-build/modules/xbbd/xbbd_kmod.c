/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xbbd.ko: module registration and the thin FreeBSD side of the block backend: the backing
 * object of a vbd (a regular file through the vnode layer, or a disk device through its
 * cdevsw, as GEOM's providers appear under /dev) and the leaves of the sysctl tree
 * dev.xbbd.<unit>. The device's taskqueue thread, which performs its I/O, and the tree itself
 * are xen.ko's shared glue (xenrs_tq_*, xenrs_sysctl_tree).
 * Every decision is the Rust library's (src/); each function here is a few lines of KPI
 * with fixed arity, so the host tests replace them with fakes.
 */
#include "xenrs_module.h"
#include "xenrs_glue.h"

#include <sys/conf.h>
#include <sys/disk.h>
#include <sys/fcntl.h>
#include <sys/filedesc.h>
#include <sys/limits.h>
#include <sys/lock.h>
#include <sys/malloc.h>
#include <sys/mount.h>
#include <sys/mutex.h>
#include <sys/namei.h>
#include <sys/proc.h>
#include <sys/ucred.h>
#include <sys/uio.h>
#include <sys/vnode.h>

XENRS_DRIVER_MODULE(xbbd);

/*
 * An opened backing object. A regular file is read and written through the vnode layer
 * (vn_rdwr, which locks the vnode itself). A character device is driven through its cdevsw
 * (devfs vnodes have no read/write operations of their own: I/O on a device goes through its
 * driver, which for a GEOM provider is physio into bios).
 */
struct xenrs_xbbd_vn {
	struct vnode	*vp;
	struct ucred	*cred;
	int		 flags;
	int		 isdev;
};

/*
 * Opens path (absolute) for reading, and writing when writable; fills the size in bytes,
 * the logical sector size and whether it is a device. Called from xen.ko's xenbus thread:
 * a kernel thread may have no root or current directory yet, pwd_ensure_dirs gives it the
 * system's. Only regular files and character devices are accepted (EINVAL otherwise).
 */
int
xenrs_xbbd_vn_open(const char *path, int writable, struct xenrs_xbbd_vn **out,
    uint64_t *size, uint32_t *sector, int *isdev)
{
	struct nameidata nd;
	struct xenrs_xbbd_vn *v;
	struct cdevsw *csw;
	struct thread *td;
	struct vnode *vp;
	off_t media;
	u_int secsize;
	int error, flags, ref;

	td = curthread;
	pwd_ensure_dirs();
	flags = FREAD | (writable ? FWRITE : 0);
	NDINIT(&nd, LOOKUP, FOLLOW, UIO_SYSSPACE, path);
	error = vn_open(&nd, &flags, 0, NULL);
	if (error != 0)
		return (error);
	NDFREE_PNBUF(&nd);
	vp = nd.ni_vp;
	VOP_UNLOCK(vp);
	if (vp->v_type != VREG && vp->v_type != VCHR) {
		(void)vn_close(vp, flags, td->td_ucred, td);
		return (EINVAL);
	}
	media = 0;
	secsize = 512;
	if (vp->v_type == VCHR) {
		csw = dev_refthread(vp->v_rdev, &ref);
		if (csw == NULL) {
			error = ENXIO;
		} else {
			error = csw->d_ioctl(vp->v_rdev, DIOCGMEDIASIZE,
			    (caddr_t)&media, FREAD, td);
			if (error == 0)
				error = csw->d_ioctl(vp->v_rdev, DIOCGSECTORSIZE,
				    (caddr_t)&secsize, FREAD, td);
			dev_relthread(vp->v_rdev, ref);
		}
	} else {
		error = vn_getsize(vp, &media, td->td_ucred);
	}
	if (error == 0 && (media < 0 || secsize < 512 || secsize > PAGE_SIZE))
		error = EINVAL;
	if (error != 0) {
		(void)vn_close(vp, flags, td->td_ucred, td);
		return (error);
	}
	v = malloc(sizeof(*v), M_DEVBUF, M_WAITOK | M_ZERO);
	v->vp = vp;
	v->cred = crhold(td->td_ucred);
	v->flags = flags;
	v->isdev = vp->v_type == VCHR;
	*out = v;
	*size = (uint64_t)media;
	*sector = secsize;
	*isdev = v->isdev;
	return (0);
}

/* Reads or writes len bytes at buf (kernel memory) at byte offset off; all or an error. */
int
xenrs_xbbd_vn_rdwr(struct xenrs_xbbd_vn *v, int write, uint64_t off, void *buf,
    uint32_t len)
{
	struct cdevsw *csw;
	struct iovec iov;
	struct uio uio;
	ssize_t resid;
	int error, ref;

	if (off > (uint64_t)OFF_MAX - len)
		return (EINVAL);
	if (!v->isdev) {
		error = vn_rdwr(write ? UIO_WRITE : UIO_READ, v->vp, buf, (int)len,
		    (off_t)off, UIO_SYSSPACE, 0, v->cred, NOCRED, &resid, curthread);
		if (error == 0 && resid != 0)
			error = EIO;
		return (error);
	}
	iov.iov_base = buf;
	iov.iov_len = len;
	uio.uio_iov = &iov;
	uio.uio_iovcnt = 1;
	uio.uio_offset = (off_t)off;
	uio.uio_resid = len;
	uio.uio_segflg = UIO_SYSSPACE;
	uio.uio_rw = write ? UIO_WRITE : UIO_READ;
	uio.uio_td = curthread;
	csw = dev_refthread(v->vp->v_rdev, &ref);
	if (csw == NULL)
		return (ENXIO);
	if (write)
		error = csw->d_write(v->vp->v_rdev, &uio, 0);
	else
		error = csw->d_read(v->vp->v_rdev, &uio, 0);
	dev_relthread(v->vp->v_rdev, ref);
	if (error == 0 && uio.uio_resid != 0)
		error = EIO;
	return (error);
}

/* Commits written data: VOP_FSYNC for a file, the device's DIOCGFLUSH. */
int
xenrs_xbbd_vn_flush(struct xenrs_xbbd_vn *v)
{
	struct cdevsw *csw;
	struct mount *mp;
	int error, ref;

	if (v->isdev) {
		csw = dev_refthread(v->vp->v_rdev, &ref);
		if (csw == NULL)
			return (ENXIO);
		error = csw->d_ioctl(v->vp->v_rdev, DIOCGFLUSH, NULL, FWRITE,
		    curthread);
		dev_relthread(v->vp->v_rdev, ref);
		return (error);
	}
	error = vn_start_write(v->vp, &mp, V_WAIT);
	if (error != 0)
		return (error);
	vn_lock(v->vp, LK_EXCLUSIVE | LK_RETRY);
	error = VOP_FSYNC(v->vp, MNT_WAIT, curthread);
	VOP_UNLOCK(v->vp);
	vn_finished_write(mp);
	return (error);
}

/*
 * Discards len bytes at off: vn_deallocate for a file (a filesystem without hole punching
 * writes zeros), the device's DIOCGDELETE (EOPNOTSUPP when it has none).
 */
int
xenrs_xbbd_vn_discard(struct xenrs_xbbd_vn *v, uint64_t off, uint64_t len)
{
	struct cdevsw *csw;
	off_t offset, length, range[2];
	int error, ref;

	if (off > (uint64_t)OFF_MAX || len > (uint64_t)OFF_MAX - off)
		return (EINVAL);
	offset = (off_t)off;
	length = (off_t)len;
	if (!v->isdev) {
		error = vn_deallocate(v->vp, &offset, &length, 0, 0, v->cred,
		    NOCRED);
		if (error == 0 && length != 0)
			error = EIO;
		return (error);
	}
	range[0] = offset;
	range[1] = length;
	csw = dev_refthread(v->vp->v_rdev, &ref);
	if (csw == NULL)
		return (ENXIO);
	error = csw->d_ioctl(v->vp->v_rdev, DIOCGDELETE, (caddr_t)range, FWRITE,
	    curthread);
	dev_relthread(v->vp->v_rdev, ref);
	return (error);
}

void
xenrs_xbbd_vn_close(struct xenrs_xbbd_vn *v)
{
	(void)vn_close(v->vp, v->flags, v->cred, curthread);
	crfree(v->cred);
	free(v, M_DEVBUF);
}

/*
 * dev.xbbd.<unit>.<leaf>, built by xen.ko (XENRS_SYSCTL_DEV): the indices are `DevStat` in
 * src/dev.rs; a unit test there checks that both lists agree.
 */
static const struct xenrs_sysctl_leaf xbbd_kmod_leaves[] = {
	{ "domid", "Frontend domain id" },
	{ "handle", "Virtual device number" },
	{ "sectors", "Size in 512-byte sectors" },
	{ "sector_size", "Logical sector size" },
	{ "read_only", "Opened read-only (mode without w)" },
	{ "connected", "A frontend is connected (1) or not (0)" },
	{ "queues", "Queues of the connection" },
	{ "ring_pages", "Ring pages per queue" },
	{ "requests", "Requests taken from the rings" },
	{ "reads", "Reads served" },
	{ "writes", "Writes served" },
	{ "flushes", "Flushes served" },
	{ "discards", "Discards served" },
	{ "errors", "Requests answered with an error" },
	{ "violations", "Protocol violations by the frontend" },
	{ "copy_failures", "Grant copy entries that failed" },
	{ "in_flight", "Requests being served" },
	{ "connections", "Connections made" },
};

XENRS_SYSCTL_DEV(xbbd, xbbd_kmod_leaves,
    "Xen PV block backend devices (xen-freebsd-rs)",
    "Xen PV block backend device");
