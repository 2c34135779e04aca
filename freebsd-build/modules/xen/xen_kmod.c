/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xen.ko: module registration, the sysctl tree hw.xenrs, and the printf(9) helper every
 * xen-freebsd-rs module's Rust code prints through. Everything else is the Rust library
 * (src/lib.rs).
 */
#include "xenrs_module.h"

#include <sys/malloc.h>
#include <sys/sysctl.h>

XENRS_MODULE(xen, SI_SUB_DRIVERS, SI_ORDER_FIRST);

void
xenrs_printf_str(const char *message)
{
	printf("%s", message);
}

/*
 * The heap behind Rust's global allocator (freebsd-kpi's alloc.rs) for every module: one
 * malloc type, so `vmstat -m` shows all Rust allocations as "xenrs". M_NOWAIT, because the
 * allocator cannot know whether its caller may sleep. Alignments up to a pointer's come from
 * plain malloc(9); larger ones (at most a page) from malloc_aligned(9).
 */
MALLOC_DEFINE(M_XENRS, "xenrs", "xen-freebsd-rs Rust allocations");

void *
xenrs_malloc(size_t size, size_t align)
{
	if (align <= sizeof(void *))
		return (malloc(size, M_XENRS, M_NOWAIT));
	if (align > PAGE_SIZE || !powerof2(align))
		return (NULL);
	return (malloc_aligned(roundup2(size, align), align, M_XENRS,
	    M_NOWAIT));
}

void
xenrs_free(void *ptr)
{
	free(ptr, M_XENRS);
}

/*
 * Numeric leaves of hw.xenrs, read from the Rust module state. The indices are
 * `XenStat` in src/lib.rs; a unit test there checks that both lists agree.
 */
#define	XENRS_XEN_STAT_XEN_MAJOR	0
#define	XENRS_XEN_STAT_XEN_MINOR	1
#define	XENRS_XEN_STAT_DOMID		2
#define	XENRS_XEN_STAT_HVM_FEATURES	3
#define	XENRS_XEN_STAT_VERBOSE		4
#define	XENRS_XEN_STAT_UPCALL		5
#define	XENRS_XEN_STAT_USERS		6

int	xenrs_xen_stat(int which, uint64_t *out);

static SYSCTL_NODE(_hw, OID_AUTO, xenrs, CTLFLAG_RD | CTLFLAG_MPSAFE, 0,
    "Xen support (xen-freebsd-rs)");

static int
xenrs_xen_sysctl(SYSCTL_HANDLER_ARGS)
{
	uint64_t value;
	int error;

	value = 0;
	error = xenrs_xen_stat((int)arg2, &value);
	if (error != 0)
		return (error);
	return (sysctl_handle_64(oidp, &value, 0, req));
}

#define	XENRS_XEN_LEAF(leaf, index, description)			\
	SYSCTL_PROC(_hw_xenrs, OID_AUTO, leaf,				\
	    CTLTYPE_U64 | CTLFLAG_RD | CTLFLAG_MPSAFE, NULL, index,	\
	    xenrs_xen_sysctl, "QU", description)

XENRS_XEN_LEAF(xen_major, XENRS_XEN_STAT_XEN_MAJOR, "Xen major version");
XENRS_XEN_LEAF(xen_minor, XENRS_XEN_STAT_XEN_MINOR, "Xen minor version");
XENRS_XEN_LEAF(domid, XENRS_XEN_STAT_DOMID,
    "Our domain id (65535 when Xen does not report it)");
XENRS_XEN_LEAF(hvm_features, XENRS_XEN_STAT_HVM_FEATURES,
    "XEN_HVM_CPUID_* feature bits");
XENRS_XEN_LEAF(verbose, XENRS_XEN_STAT_VERBOSE,
    "Verbosity (loader tunable hw.xenrs.verbose, 0-2)");
XENRS_XEN_LEAF(upcall, XENRS_XEN_STAT_UPCALL,
    "Event upcall (loader tunable hw.xenrs.upcall): 0 auto, 1 vector, 2 pci");
XENRS_XEN_LEAF(users, XENRS_XEN_STAT_USERS,
    "Open users of xen.ko; unloading is refused while non-zero");
