/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * The device interface of newbus (FreeBSD's sys/kern/device_if.m), as FreeBSD's build would
 * generate it with makeobjops.awk, written for the Linux build of xen-freebsd-rs, whose
 * FreeBSD headers (PyPI ziglang) lack build-generated files. The native FreeBSD build
 * generates the real one instead (modules/Makefile.inc lists it in SRCS).
 *
 * For each method: the descriptor the kernel defines (referenced by DEVMETHOD), the method's
 * function type, and the dispatching inline.
 */
#ifndef _device_if_h_
#define _device_if_h_

#include <sys/bus.h>
#include <sys/kobj.h>

extern struct kobjop_desc device_probe_desc;
typedef int device_probe_t(device_t dev);
static __inline int
DEVICE_PROBE(device_t dev)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)dev)->ops, device_probe);
	return (((device_probe_t *)_m)(dev));
}

/* A static method: dispatched through the driver's class, not a device. */
extern struct kobjop_desc device_identify_desc;
typedef void device_identify_t(driver_t *driver, device_t parent);
static __inline void
DEVICE_IDENTIFY(driver_t *driver, device_t parent)
{
	kobjop_t _m;

	KOBJOPLOOKUP(driver->ops, device_identify);
	((device_identify_t *)_m)(driver, parent);
}

#define	XENRS_DEVICE_METHOD(lower, upper)				\
	extern struct kobjop_desc device_##lower##_desc;		\
	typedef int device_##lower##_t(device_t dev);			\
	static __inline int						\
	DEVICE_##upper(device_t dev)					\
	{								\
		kobjop_t _m;						\
									\
		KOBJOPLOOKUP(((kobj_t)dev)->ops, device_##lower);	\
		return (((device_##lower##_t *)_m)(dev));		\
	}

XENRS_DEVICE_METHOD(attach, ATTACH)
XENRS_DEVICE_METHOD(detach, DETACH)
XENRS_DEVICE_METHOD(shutdown, SHUTDOWN)
XENRS_DEVICE_METHOD(suspend, SUSPEND)
XENRS_DEVICE_METHOD(resume, RESUME)
XENRS_DEVICE_METHOD(quiesce, QUIESCE)

#undef XENRS_DEVICE_METHOD

extern struct kobjop_desc device_register_desc;
typedef void *device_register_t(device_t dev);
static __inline void *
DEVICE_REGISTER(device_t dev)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)dev)->ops, device_register);
	return (((device_register_t *)_m)(dev));
}

#endif /* _device_if_h_ */
