/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xen-freebsd-rs: the C side of a Rust kernel module.
 *
 * XENRS_MODULE(name, subsystem, order) declares module `name` with DECLARE_MODULE and
 * MODULE_VERSION (version 1) and an event handler that forwards to the Rust entry points
 * defined by freebsd_kpi::kernel_module! in the module's crate:
 *
 *	MOD_LOAD	-> int xenrs_<name>_load(void)
 *	MOD_QUIESCE	-> int xenrs_<name>_quiesce(void)
 *	MOD_UNLOAD	-> int xenrs_<name>_unload(void)
 *	MOD_SHUTDOWN	-> 0
 *
 * each returning 0 or an errno. Why C for this part: the linker-set records these macros emit
 * (struct sysinit, struct mod_metadata, struct mod_version, struct mod_depend) are private
 * layouts of <sys/kernel.h>/<sys/module.h>; compiling them from the real headers keeps them
 * right for every FreeBSD version and architecture, and is exactly what bsd.kmod.mk does on a
 * FreeBSD machine. Everything else lives in Rust.
 */
#ifndef _XENRS_MODULE_H_
#define _XENRS_MODULE_H_

#include <sys/param.h>
#include <sys/systm.h>
#include <sys/errno.h>
#include <sys/kernel.h>
#include <sys/module.h>
#include <sys/bus.h>

/*
 * newbus interfaces, for the device glue; compiled into every shim so both architectures'
 * builds keep them honest. On Linux these come from include/generated (written from the
 * interface definitions); on FreeBSD kmod.mk generates them (modules/Makefile.inc).
 */
#include "device_if.h"
#include "bus_if.h"

/*
 * Defined by xen.ko's shim for every module's Rust code (printf(9) is variadic and malloc(9)
 * needs the malloc type; Rust calls these fixed-arity helpers instead).
 */
void	xenrs_printf_str(const char *message);
void	*xenrs_malloc(size_t size, size_t align);
void	xenrs_free(void *ptr);

#define	XENRS_MODULE(name, subsystem, order)				\
	int xenrs_##name##_load(void);					\
	int xenrs_##name##_quiesce(void);				\
	int xenrs_##name##_unload(void);				\
									\
	static int							\
	name##_xenrs_modevent(module_t mod __unused, int type,		\
	    void *arg __unused)						\
	{								\
		switch (type) {						\
		case MOD_LOAD:						\
			return (xenrs_##name##_load());			\
		case MOD_QUIESCE:					\
			return (xenrs_##name##_quiesce());		\
		case MOD_UNLOAD:					\
			return (xenrs_##name##_unload());		\
		case MOD_SHUTDOWN:					\
			return (0);					\
		default:						\
			return (EOPNOTSUPP);				\
		}							\
	}								\
									\
	static moduledata_t name##_xenrs_moduledata = {			\
		#name, name##_xenrs_modevent, NULL			\
	};								\
	DECLARE_MODULE(name, name##_xenrs_moduledata, subsystem, order); \
	MODULE_VERSION(name, 1)

/*
 * A driver module: needs xen.ko (version 1), initialised after it. xen.ko starts at
 * (SI_SUB_CONFIGURE, SI_ORDER_MIDDLE): in a custom kernel that is after configure()
 * (SI_ORDER_THIRD) has attached the devices, among them the Xen platform PCI device whose
 * interrupt carries the upcall; as a module, the order within the kldload is the same.
 */
#define	XENRS_DRIVER_MODULE(name)					\
	XENRS_MODULE(name, SI_SUB_CONFIGURE, SI_ORDER_ANY);		\
	MODULE_DEPEND(name, xen, 1, 1, 1)

#endif /* !_XENRS_MODULE_H_ */
