/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xen-freebsd-rs: the driver modules' shared kernel glue, defined once in xen.ko's shim
 * (modules/xen/xen_kmod.c, exported through modules/xen/export_syms) and used by every
 * driver module, which all depend on xen.ko. See docs/FREEBSD.md, "The driver modules".
 *
 * Locks and taskqueues (xenrs_sx_*, xenrs_mtx_*, xenrs_tq_*) are called from Rust only
 * (freebsd_kpi::sync, freebsd_kpi::taskqueue). The per-device sysctl tree is declared here
 * because its parent node is a static linker-set object of the driver's own shim:
 *
 *	static const struct xenrs_sysctl_leaf xn_kmod_leaves[] = {
 *		{ "rx_packets", "Frames received" }, ...
 *	};
 *	XENRS_SYSCTL_DEV(xn, xn_kmod_leaves, "Xen PV network interfaces", "Xen PV interface");
 *
 * declares dev.xn, and defines xenrs_xn_sysctl_attach(softc, unit) (dev.xn.<unit>, each
 * leaf a read-only uint64 from xenrs_xn_dev_stat(softc, index, &value), which the module's
 * Rust defines) and xenrs_xn_sysctl_detach(tree), which the Rust side calls.
 */
#ifndef _XENRS_GLUE_H_
#define _XENRS_GLUE_H_

#include <sys/types.h>
#include <sys/sysctl.h>

/* A leaf of a device's sysctl tree: its index in the table is the `which` of the stat. */
struct xenrs_sysctl_leaf {
	const char	*name;
	const char	*descr;
};

/* 0 and *out set, or an errno (the read fails with it). */
typedef int	xenrs_stat_fn(void *softc, int which, uint64_t *out);

/*
 * Adds node <unit> under parent with one read-only uint64 leaf per entry of leaves, read
 * through stat(softc, index, &value); NULL when out of memory. Freed (and running handlers
 * waited for) by xenrs_sysctl_tree_free, which must come before softc is freed.
 */
void	*xenrs_sysctl_tree(struct sysctl_oid_list *parent, u_int unit,
	    const char *descr, const struct xenrs_sysctl_leaf *leaves, u_int nleaves,
	    xenrs_stat_fn *stat, void *softc);
void	xenrs_sysctl_tree_free(void *tree);

#define	XENRS_SYSCTL_DEV(m, leaves, nodedescr, unitdescr)		\
	static SYSCTL_NODE(_dev, OID_AUTO, m, CTLFLAG_RD | CTLFLAG_MPSAFE, 0,	\
	    nodedescr);							\
	int	xenrs_##m##_dev_stat(void *softc, int which, uint64_t *out);	\
	void	*xenrs_##m##_sysctl_attach(void *softc, u_int unit);	\
	void	xenrs_##m##_sysctl_detach(void *tree);			\
									\
	void *								\
	xenrs_##m##_sysctl_attach(void *softc, u_int unit)		\
	{								\
		return (xenrs_sysctl_tree(SYSCTL_STATIC_CHILDREN(_dev_##m), \
		    unit, unitdescr, leaves, nitems(leaves),		\
		    xenrs_##m##_dev_stat, softc));			\
	}								\
									\
	void								\
	xenrs_##m##_sysctl_detach(void *tree)				\
	{								\
		xenrs_sysctl_tree_free(tree);				\
	}								\
	struct __hack

#endif /* !_XENRS_GLUE_H_ */
