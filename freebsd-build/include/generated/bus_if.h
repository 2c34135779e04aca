/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * The part of newbus's bus interface (FreeBSD's sys/kern/bus_if.m) that xen-freebsd-rs's
 * glue uses, as makeobjops.awk would generate it; written for the Linux build (see
 * device_if.h). The native FreeBSD build generates the full, real header instead.
 */
#ifndef _bus_if_h_
#define _bus_if_h_

#include <sys/bus.h>
#include <sys/kobj.h>

struct resource;

extern struct kobjop_desc bus_print_child_desc;
typedef int bus_print_child_t(device_t _dev, device_t _child);
static __inline int
BUS_PRINT_CHILD(device_t _dev, device_t _child)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_print_child);
	return (((bus_print_child_t *)_m)(_dev, _child));
}

extern struct kobjop_desc bus_probe_nomatch_desc;
typedef void bus_probe_nomatch_t(device_t _dev, device_t _child);
static __inline void
BUS_PROBE_NOMATCH(device_t _dev, device_t _child)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_probe_nomatch);
	((bus_probe_nomatch_t *)_m)(_dev, _child);
}

extern struct kobjop_desc bus_read_ivar_desc;
typedef int bus_read_ivar_t(device_t _dev, device_t _child, int _index,
    uintptr_t *_result);
static __inline int
BUS_READ_IVAR(device_t _dev, device_t _child, int _index, uintptr_t *_result)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_read_ivar);
	return (((bus_read_ivar_t *)_m)(_dev, _child, _index, _result));
}

extern struct kobjop_desc bus_write_ivar_desc;
typedef int bus_write_ivar_t(device_t _dev, device_t _child, int _indx,
    uintptr_t _value);
static __inline int
BUS_WRITE_IVAR(device_t _dev, device_t _child, int _indx, uintptr_t _value)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_write_ivar);
	return (((bus_write_ivar_t *)_m)(_dev, _child, _indx, _value));
}

extern struct kobjop_desc bus_child_deleted_desc;
typedef void bus_child_deleted_t(device_t _dev, device_t _child);
static __inline void
BUS_CHILD_DELETED(device_t _dev, device_t _child)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_child_deleted);
	((bus_child_deleted_t *)_m)(_dev, _child);
}

extern struct kobjop_desc bus_child_detached_desc;
typedef void bus_child_detached_t(device_t _dev, device_t _child);
static __inline void
BUS_CHILD_DETACHED(device_t _dev, device_t _child)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_child_detached);
	((bus_child_detached_t *)_m)(_dev, _child);
}

extern struct kobjop_desc bus_driver_added_desc;
typedef void bus_driver_added_t(device_t _dev, driver_t *_driver);
static __inline void
BUS_DRIVER_ADDED(device_t _dev, driver_t *_driver)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_driver_added);
	((bus_driver_added_t *)_m)(_dev, _driver);
}

extern struct kobjop_desc bus_add_child_desc;
typedef device_t bus_add_child_t(device_t _dev, u_int _order, const char *_name,
    int _unit);
static __inline device_t
BUS_ADD_CHILD(device_t _dev, u_int _order, const char *_name, int _unit)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_add_child);
	return (((bus_add_child_t *)_m)(_dev, _order, _name, _unit));
}

extern struct kobjop_desc bus_setup_intr_desc;
typedef int bus_setup_intr_t(device_t _dev, device_t _child,
    struct resource *_irq, int _flags, driver_filter_t *_filter,
    driver_intr_t *_intr, void *_arg, void **_cookiep);
static __inline int
BUS_SETUP_INTR(device_t _dev, device_t _child, struct resource *_irq,
    int _flags, driver_filter_t *_filter, driver_intr_t *_intr, void *_arg,
    void **_cookiep)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_setup_intr);
	return (((bus_setup_intr_t *)_m)(_dev, _child, _irq, _flags, _filter,
	    _intr, _arg, _cookiep));
}

extern struct kobjop_desc bus_teardown_intr_desc;
typedef int bus_teardown_intr_t(device_t _dev, device_t _child,
    struct resource *_irq, void *_cookie);
static __inline int
BUS_TEARDOWN_INTR(device_t _dev, device_t _child, struct resource *_irq,
    void *_cookie)
{
	kobjop_t _m;

	KOBJOPLOOKUP(((kobj_t)_dev)->ops, bus_teardown_intr);
	return (((bus_teardown_intr_t *)_m)(_dev, _child, _irq, _cookie));
}

#endif /* _bus_if_h_ */
