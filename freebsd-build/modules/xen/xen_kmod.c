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

/*
 * After the platform PCI driver below (DRIVER_MODULE, SI_SUB_DRIVERS) has attached to the
 * device, so the upcall can use its interrupt: as a module that happens when the driver is
 * added, in a custom kernel in configure() at (SI_SUB_CONFIGURE, SI_ORDER_THIRD). The driver
 * modules (SI_ORDER_ANY, MODULE_DEPEND on xen) come later still.
 */
XENRS_MODULE(xen, SI_SUB_CONFIGURE, SI_ORDER_MIDDLE);

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
#define	XENRS_XEN_STAT_UPCALL_AT	7
#define	XENRS_XEN_STAT_UPCALLS		8
#define	XENRS_XEN_STAT_EVENTS		9
#define	XENRS_XEN_STAT_EVENTS_DROPPED	10
#define	XENRS_XEN_STAT_EVTCHN_ABI	11
#define	XENRS_XEN_STAT_EVTCHN_PORTS	12
#define	XENRS_XEN_STAT_EVTCHN_FIFO_PAGES	13
#define	XENRS_XEN_STAT_GNTTAB_FRAMES	14
#define	XENRS_XEN_STAT_GNTTAB_GRANTS	15
#define	XENRS_XEN_STAT_REGISTRATIONS	16
#define	XENRS_XEN_STAT_OPEN_FILES	17

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
XENRS_XEN_LEAF(upcall_at, XENRS_XEN_STAT_UPCALL_AT,
    "The upcall's IRQ (pci) or IDT vector (vector)");
XENRS_XEN_LEAF(upcalls, XENRS_XEN_STAT_UPCALLS,
    "Runs of the event task (upcalls and requeues)");
XENRS_XEN_LEAF(events, XENRS_XEN_STAT_EVENTS,
    "Events delivered to the driver modules' handlers");
XENRS_XEN_LEAF(events_dropped, XENRS_XEN_STAT_EVENTS_DROPPED,
    "Events for ports nobody has bound any more (dropped)");
XENRS_XEN_LEAF(evtchn_abi, XENRS_XEN_STAT_EVTCHN_ABI,
    "Event channel ABI: 0 2-level, 1 FIFO");
XENRS_XEN_LEAF(evtchn_ports, XENRS_XEN_STAT_EVTCHN_PORTS,
    "Event channel ports bound (drivers, /dev/xen/evtchn, xenstore)");
XENRS_XEN_LEAF(evtchn_fifo_pages, XENRS_XEN_STAT_EVTCHN_FIFO_PAGES,
    "FIFO control/array pages Xen holds for good (left behind by unloads)");
XENRS_XEN_LEAF(gnttab_frames, XENRS_XEN_STAT_GNTTAB_FRAMES,
    "Grant table frames in use");
XENRS_XEN_LEAF(gnttab_grants, XENRS_XEN_STAT_GNTTAB_GRANTS,
    "Grant references handed to the driver modules");
XENRS_XEN_LEAF(registrations, XENRS_XEN_STAT_REGISTRATIONS,
    "xenbus driver registrations");
XENRS_XEN_LEAF(open_files, XENRS_XEN_STAT_OPEN_FILES,
    "Open /dev/xen files");

/*
 * The KPI xen.ko's Rust bring-up uses (src/kpi.rs): fixed-arity wrappers of macros and
 * variadic or header-private interfaces.
 */
#include <sys/lock.h>
#include <sys/mutex.h>
#include <sys/sx.h>
#include <sys/taskqueue.h>
#include <sys/time.h>
#include <sys/smp.h>
#include <sys/proc.h>
#include <sys/rman.h>
#include <vm/vm.h>
#include <vm/pmap.h>
#include <machine/resource.h>
#include <machine/bus.h>

#include "xenrs_api.h"
#include "xenrs_glue.h"

/* Locks for freebsd_kpi::sync::SxLock (exported: the drivers' Rust uses them too). */
void *
xenrs_sx_new(const char *name)
{
	struct sx *sx;

	sx = malloc(sizeof(*sx), M_XENRS, M_WAITOK | M_ZERO);
	sx_init(sx, name);
	return (sx);
}

void
xenrs_sx_lock(void *lock)
{
	sx_xlock((struct sx *)lock);
}

void
xenrs_sx_unlock(void *lock)
{
	sx_xunlock((struct sx *)lock);
}

void
xenrs_sx_free(void *lock)
{
	sx_destroy((struct sx *)lock);
	free(lock, M_XENRS);
}

/* 1 when taken, 0 when another thread holds it (never sleeps). */
int
xenrs_sx_try_lock(void *lock)
{
	return (sx_try_xlock((struct sx *)lock));
}

/*
 * The driver modules' shared kernel glue (freebsd_kpi::sync::Mutex and
 * freebsd_kpi::taskqueue::TaskQueue, docs/FREEBSD.md "The driver modules"): one copy here,
 * exported, instead of one per module. Every driver module depends on xen.ko, so these are
 * always loaded first, and one global name serves a custom kernel too.
 *
 * An MTX_DEF mutex named `name` (which must outlive it); never sleeps to take.
 */
void *
xenrs_mtx_new(const char *name)
{
	struct mtx *m;

	m = malloc(sizeof(*m), M_XENRS, M_WAITOK | M_ZERO);
	mtx_init(m, name, NULL, MTX_DEF);
	return (m);
}

void
xenrs_mtx_lock(void *m)
{
	mtx_lock((struct mtx *)m);
}

void
xenrs_mtx_unlock(void *m)
{
	mtx_unlock((struct mtx *)m);
}

void
xenrs_mtx_free(void *m)
{
	mtx_destroy((struct mtx *)m);
	free(m, M_XENRS);
}

/*
 * A device's own taskqueue thread ("<name><unit> taskq") running one task, fn(arg), now or
 * after a delay. xen.ko's event thread only flags work and enqueues the task, which may
 * sleep (it waits for the device's sx lock). prio: 0 PWAIT, 1 PRIBIO (a disk's I/O).
 */
struct xenrs_tq {
	struct taskqueue	*tq;
	struct task		 task;
	struct timeout_task	 later;
	void			(*fn)(void *);
	void			*arg;
};

static void
xenrs_tq_run(void *arg, int pending __unused)
{
	struct xenrs_tq *t;

	t = arg;
	t->fn(t->arg);
}

void *
xenrs_tq_new(void (*fn)(void *), void *arg, const char *name, u_int unit, int prio)
{
	struct xenrs_tq *t;

	t = malloc(sizeof(*t), M_XENRS, M_WAITOK | M_ZERO);
	t->fn = fn;
	t->arg = arg;
	TASK_INIT(&t->task, 0, xenrs_tq_run, t);
	t->tq = taskqueue_create(name, M_WAITOK, taskqueue_thread_enqueue,
	    &t->tq);
	TIMEOUT_TASK_INIT(t->tq, &t->later, 0, xenrs_tq_run, t);
	taskqueue_start_threads(&t->tq, 1, prio == 1 ? PRIBIO : PWAIT,
	    "%s%u taskq", name, unit);
	return (t);
}

void
xenrs_tq_enqueue(void *tq)
{
	struct xenrs_tq *t;

	t = tq;
	taskqueue_enqueue(t->tq, &t->task);
}

/* The task again in ms milliseconds (at least one tick). */
void
xenrs_tq_enqueue_later(void *tq, u_int ms)
{
	struct xenrs_tq *t;

	t = tq;
	taskqueue_enqueue_timeout(t->tq, &t->later, MAX(1, ms * hz / 1000));
}

/*
 * Cancels a delayed run not yet due and waits for a run in progress (and for one the task
 * enqueues itself meanwhile).
 */
void
xenrs_tq_drain(void *tq)
{
	struct xenrs_tq *t;

	t = tq;
	taskqueue_drain_timeout(t->tq, &t->later);
	taskqueue_drain(t->tq, &t->task);
}

/* Drains (xenrs_tq_drain), then frees the thread and the queue. */
void
xenrs_tq_free(void *tq)
{
	struct xenrs_tq *t;

	t = tq;
	xenrs_tq_drain(t);
	taskqueue_free(t->tq);
	free(t, M_XENRS);
}

/*
 * A device's sysctl tree dev.<m>.<unit> (include/xenrs_glue.h, XENRS_SYSCTL_DEV): one
 * read-only uint64 leaf per table entry, read through the driver's stat function.
 */
struct xenrs_sysctl_tree {
	struct sysctl_ctx_list	 ctx;
	xenrs_stat_fn		*stat;
	void			*softc;
};

static int
xenrs_sysctl_leaf_handler(SYSCTL_HANDLER_ARGS)
{
	struct xenrs_sysctl_tree *t;
	uint64_t value;
	int error;

	t = arg1;
	value = 0;
	error = t->stat(t->softc, (int)arg2, &value);
	if (error != 0)
		return (error);
	return (sysctl_handle_64(oidp, &value, 0, req));
}

void *
xenrs_sysctl_tree(struct sysctl_oid_list *parent, u_int unit, const char *descr,
    const struct xenrs_sysctl_leaf *leaves, u_int nleaves, xenrs_stat_fn *stat,
    void *softc)
{
	struct xenrs_sysctl_tree *t;
	struct sysctl_oid *node;
	char name[16];
	u_int i;

	t = malloc(sizeof(*t), M_XENRS, M_NOWAIT | M_ZERO);
	if (t == NULL)
		return (NULL);
	t->stat = stat;
	t->softc = softc;
	sysctl_ctx_init(&t->ctx);
	snprintf(name, sizeof(name), "%u", unit);
	node = SYSCTL_ADD_NODE(&t->ctx, parent, OID_AUTO, name,
	    CTLFLAG_RD | CTLFLAG_MPSAFE, NULL, descr);
	if (node == NULL) {
		sysctl_ctx_free(&t->ctx);
		free(t, M_XENRS);
		return (NULL);
	}
	for (i = 0; i < nleaves; i++)
		SYSCTL_ADD_PROC(&t->ctx, SYSCTL_CHILDREN(node), OID_AUTO,
		    leaves[i].name, CTLTYPE_U64 | CTLFLAG_RD | CTLFLAG_MPSAFE,
		    t, i, xenrs_sysctl_leaf_handler, "QU", leaves[i].descr);
	return (t);
}

/* Removes the tree; sysctl waits for handlers that are running. */
void
xenrs_sysctl_tree_free(void *tree)
{
	struct xenrs_sysctl_tree *t;

	t = tree;
	sysctl_ctx_free(&t->ctx);
	free(t, M_XENRS);
}

void *
xenrs_kpi_pages_alloc(uint32_t npages, int exec, uint64_t *paddr)
{
	void *va;

	if (npages == 0 || npages > 512)
		return (NULL);
	if (exec) {
		if (npages != 1)
			return (NULL);
		va = malloc_exec(PAGE_SIZE, M_XENRS, M_WAITOK | M_ZERO);
		if (va != NULL && ((uintptr_t)va & PAGE_MASK) != 0) {
			free(va, M_XENRS);
			return (NULL);
		}
	} else
		va = contigmalloc(ptoa(npages), M_XENRS, M_WAITOK | M_ZERO, 0,
		    ~(vm_paddr_t)0, PAGE_SIZE, 0);
	if (va != NULL)
		*paddr = vtophys(va);
	return (va);
}

void
xenrs_kpi_pages_free(void *va, uint32_t npages, int exec)
{
	if (exec)
		free(va, M_XENRS);
	else
		contigfree(va, ptoa(npages), M_XENRS);
}

void *
xenrs_kpi_map_frame(uint64_t paddr)
{
	return (pmap_mapdev_attr(paddr, PAGE_SIZE, VM_MEMATTR_WRITE_BACK));
}

void
xenrs_kpi_unmap_frame(void *va)
{
	pmap_unmapdev(va, PAGE_SIZE);
}

uint64_t
xenrs_kpi_uptime_ns(void)
{
	return (sbttons(sbinuptime()));
}

void
xenrs_kpi_sleep(const void *chan, int ms)
{
	(void)tsleep(__DECONST(void *, chan), 0, "xenrs",
	    MAX(1, (int)(((int64_t)ms * hz + 999) / 1000)));
}

void
xenrs_kpi_wakeup(const void *chan)
{
	wakeup(__DECONST(void *, chan));
}

const void *
xenrs_kpi_curthread(void)
{
	return (curthread);
}

uint32_t
xenrs_kpi_ncpus(void)
{
	return ((uint32_t)mp_ncpus);
}

/* The two taskqueue threads: events (handlers) and xenbus (registration callbacks). */
void	xenrs_xen_run_events(void);
void	xenrs_xen_run_xenbus(void);

static struct taskqueue *xenrs_tq[2];
static struct task xenrs_task[2];
/* The same tasks, later: throttle expiry (events), deferred grant revocations (xenbus). */
static struct timeout_task xenrs_ttask[2];

static void
xenrs_events_task(void *arg __unused, int pending __unused)
{
	xenrs_xen_run_events();
}

static void
xenrs_xenbus_task(void *arg __unused, int pending __unused)
{
	xenrs_xen_run_xenbus();
}

int
xenrs_kpi_threads_start(void)
{
	static const char *names[2] = { "xenrs events", "xenrs xenbus" };
	int i;

	TASK_INIT(&xenrs_task[0], 0, xenrs_events_task, NULL);
	TASK_INIT(&xenrs_task[1], 0, xenrs_xenbus_task, NULL);
	for (i = 0; i < 2; i++) {
		/* Fast queue: the events task is queued from an interrupt filter. */
		xenrs_tq[i] = taskqueue_create_fast(names[i], M_WAITOK,
		    taskqueue_thread_enqueue, &xenrs_tq[i]);
		TIMEOUT_TASK_INIT(xenrs_tq[i], &xenrs_ttask[i], 0,
		    i == 0 ? xenrs_events_task : xenrs_xenbus_task, NULL);
		if (taskqueue_start_threads(&xenrs_tq[i], 1, PI_NET, "%s",
		    names[i]) != 0) {
			taskqueue_free(xenrs_tq[i]);
			xenrs_tq[i] = NULL;
			while (i-- > 0) {
				taskqueue_free(xenrs_tq[i]);
				xenrs_tq[i] = NULL;
			}
			return (ENOMEM);
		}
	}
	return (0);
}

void
xenrs_kpi_threads_stop(void)
{
	int i;

	for (i = 0; i < 2; i++) {
		if (xenrs_tq[i] == NULL)
			continue;
		taskqueue_drain_timeout(xenrs_tq[i], &xenrs_ttask[i]);
		taskqueue_drain(xenrs_tq[i], &xenrs_task[i]);
		taskqueue_free(xenrs_tq[i]);
		xenrs_tq[i] = NULL;
	}
}

void
xenrs_kpi_kick_after(int which, uint32_t ms)
{
	if (which >= 0 && which < 2 && xenrs_tq[which] != NULL)
		(void)taskqueue_enqueue_timeout(xenrs_tq[which],
		    &xenrs_ttask[which],
		    MAX(1, (int)(((uint64_t)ms * hz + 999) / 1000)));
}

void
xenrs_kpi_kick(int which)
{
	if (which >= 0 && which < 2 && xenrs_tq[which] != NULL)
		taskqueue_enqueue(xenrs_tq[which], &xenrs_task[which]);
}

/*
 * The upcall through the Xen platform PCI device's interrupt (level-triggered; Xen keeps
 * the line up while vCPU 0's evtchn_upcall_pending is set). The filter clears that flag
 * (xenrs_xen_upcall: one atomic store, no lock) so the line drops, and queues the events
 * task, which polls the event-channel core and runs the handlers in a thread: a filter may
 * not sleep, and an ithread may not take the sleepable locks the core and the drivers'
 * handlers use. Events that arrive meanwhile are not lost: the poll scans Xen's pending
 * bits, not the flag, and a new event raises the flag (and the line) again.
 */
void	xenrs_xen_upcall(void);

/*
 * The Xen platform PCI device (vendor 0x5853, device 0x0001) is claimed by a small newbus
 * driver on pci (below), so its interrupt is allocated and set up the ordinary way.
 * <dev/pci/pcivar.h> is not in the FreeBSD header set available on Linux; the ivar index
 * used is PCI_IVAR_DEVID of its `enum pci_device_ivars` (subvendor 0, subdevice 1, vendor
 * 2, device 3, devid 4), read through BUS_READ_IVAR as pci_get_devid() does.
 */
#define	XENRS_PCI_VENDOR	0x5853
#define	XENRS_PCI_DEVICE	0x0001
#define	XENRS_PCI_IVAR_DEVID	4

static device_t xenrs_pci_dev;
static struct resource *xenrs_irq;
static int xenrs_irq_rid;
static void *xenrs_irq_cookie;

static int
xenrs_upcall_filter(void *arg __unused)
{
	xenrs_xen_upcall();
	return (FILTER_HANDLED);
}

int
xenrs_kpi_upcall_setup(int mode, uint32_t *where)
{
	int error;

	/* The per-vCPU vector is set up by xenrs_kpi_vec_* below, step by step from Rust. */
	if (mode != 2)
		return (EINVAL);
	if (xenrs_pci_dev == NULL) {
		printf("xen: upcall: no Xen platform PCI device (5853:0001) attached\n");
		return (ENXIO);
	}
	xenrs_irq_rid = 0;
	xenrs_irq = bus_alloc_resource_any(xenrs_pci_dev, SYS_RES_IRQ,
	    &xenrs_irq_rid, RF_SHAREABLE | RF_ACTIVE);
	if (xenrs_irq == NULL) {
		printf("xen: upcall: cannot allocate the platform device's IRQ\n");
		return (ENXIO);
	}
	error = bus_setup_intr(xenrs_pci_dev, xenrs_irq,
	    INTR_TYPE_MISC | INTR_MPSAFE, xenrs_upcall_filter, NULL, NULL,
	    &xenrs_irq_cookie);
	if (error != 0) {
		bus_release_resource(xenrs_pci_dev, SYS_RES_IRQ, xenrs_irq_rid,
		    xenrs_irq);
		xenrs_irq = NULL;
		printf("xen: upcall: bus_setup_intr failed: %d\n", error);
		return (error);
	}
	*where = (uint32_t)rman_get_start(xenrs_irq);
	return (0);
}

void
xenrs_kpi_upcall_teardown(void)
{
	if (xenrs_irq == NULL)
		return;
	bus_teardown_intr(xenrs_pci_dev, xenrs_irq, xenrs_irq_cookie);
	bus_release_resource(xenrs_pci_dev, SYS_RES_IRQ, xenrs_irq_rid,
	    xenrs_irq);
	xenrs_irq = NULL;
}

int
xenrs_kpi_upcall_pci_present(void)
{
	return (xenrs_pci_dev != NULL);
}

/*
 * The per-vCPU upcall vector (hw.xenrs.upcall=vector), without an IDT entry stub of our
 * own: the upcall is an ordinary x86 interrupt source (struct intsrc) of a PIC of ours,
 * registered at an IRQ number nobody uses. Its vector is allocated on the boot CPU's local
 * APIC with apic_alloc_vector(), whose stock IDT entry (Xapic_isrN, installed by
 * apic_enable_vector()) calls lapic_handle_intr() -> intr_execute_handlers() -> our
 * filter, and then the PIC's pic_eoi_source (lapic_eoi()). src/kpi.rs drives the steps and
 * their undoing; the IRQ is chosen there from xenrs_kpi_irq_space()/xenrs_kpi_irq_used().
 *
 * FreeBSD has no intr_deregister_source() or intr_deregister_pic(): once registered, the
 * source and its PIC stay in the kernel's tables for good. So both live in M_DEVBUF memory
 * (not freed at unload), the loader environment variable hw.xenrs.upcall_source records
 * "<irq>:<address>", and the next load of xen.ko finds and reuses them. Between loads the
 * source is inert: its vectors are freed (no IDT path leads to it), it has no handler, and
 * nothing in the kernel calls a method of its PIC any more: pic_register_sources,
 * pic_suspend, pic_resume and pic_reprogram_pin are NULL (checked by intr_machdep.c),
 * ie_assign_cpu is NULL (intr_event_bind() then refuses with EOPNOTSUPP), and ie_cpu is CPU 0
 * (intr_balance() skips bound events). The methods the interrupt path uses point into
 * xen.ko's text, so a reload rewrites them, and the copies intr_register_source() made into
 * the intr_event (ie_post_filter, ie_post_ithread).
 */
#include <sys/interrupt.h>
#include <sys/mutex.h>
#include <machine/intr_machdep.h>
#include <x86/apicvar.h>

#define	XENRS_VSRC_ENV		"hw.xenrs.upcall_source"

struct xenrs_vsrc {
	struct intsrc	vs_isrc;	/* first: the kernel passes &vs_isrc */
	/*
	 * Never NULL. It sits where msi.c's struct msi_intsrc has msi_dev: were MSI ever to
	 * reach our IRQ (the last of its range; msi_create_source() then fails with EEXIST),
	 * msi_alloc() and msix_alloc(), which read msi_dev of every source in the MSI range,
	 * would see this one as taken and never write it.
	 */
	void		*vs_taken;
	struct pic	vs_pic;
	u_int		vs_irq;
};

static struct xenrs_vsrc *xenrs_vsrc;
static void *xenrs_vsrc_cookie;

static void
xenrs_vpic_nop(struct intsrc *isrc __unused)
{
}

static void
xenrs_vpic_disable_source(struct intsrc *isrc __unused, int eoi)
{
	/* A local APIC vector cannot be masked; a stray is acknowledged. */
	if (eoi == PIC_EOI)
		lapic_eoi();
}

static void
xenrs_vpic_eoi_source(struct intsrc *isrc __unused)
{
	lapic_eoi();
}

static int
xenrs_vpic_vector(struct intsrc *isrc)
{
	return ((int)((struct xenrs_vsrc *)isrc)->vs_irq);
}

static int
xenrs_vpic_source_pending(struct intsrc *isrc __unused)
{
	return (0);
}

static int
xenrs_vpic_config_intr(struct intsrc *isrc __unused,
    enum intr_trigger trig __unused, enum intr_polarity pol __unused)
{
	return (EOPNOTSUPP);
}

static int
xenrs_vpic_assign_cpu(struct intsrc *isrc __unused, u_int apic_id __unused)
{
	/* Xen is told one vector on vCPU 0 (the boot CPU): it does not move. */
	return (EOPNOTSUPP);
}

/* The methods, (re)written at every load: they point into this module's text. */
static void
xenrs_vsrc_methods(struct xenrs_vsrc *vs)
{
	struct pic *pic = &vs->vs_pic;

	pic->pic_register_sources = NULL;
	pic->pic_enable_source = xenrs_vpic_nop;
	pic->pic_disable_source = xenrs_vpic_disable_source;
	pic->pic_eoi_source = xenrs_vpic_eoi_source;
	pic->pic_enable_intr = xenrs_vpic_nop;
	pic->pic_disable_intr = xenrs_vpic_nop;
	pic->pic_vector = xenrs_vpic_vector;
	pic->pic_source_pending = xenrs_vpic_source_pending;
	pic->pic_suspend = NULL;
	pic->pic_resume = NULL;
	pic->pic_config_intr = xenrs_vpic_config_intr;
	pic->pic_assign_cpu = xenrs_vpic_assign_cpu;
	pic->pic_reprogram_pin = NULL;
}

void
xenrs_kpi_irq_space(uint32_t *num_io, uint32_t *first_msi, uint32_t *num_msi)
{
	*num_io = num_io_irqs;
	*first_msi = first_msi_irq;
	*num_msi = num_msi_irqs;
}

int
xenrs_kpi_irq_used(uint32_t irq)
{
	return (intr_lookup_source((int)irq) != NULL);
}

/* A source left by an earlier load of xen.ko: 0 and its IRQ, or ENOENT. */
int
xenrs_kpi_vec_source_find(uint32_t *irq)
{
	struct intsrc *isrc;
	struct xenrs_vsrc *vs;
	char *env, *end;
	u_long n;
	uintptr_t addr;
	int error = ENOENT;

	env = kern_getenv(XENRS_VSRC_ENV);
	if (env == NULL)
		return (ENOENT);
	n = strtoul(env, &end, 10);
	if (end != env && *end == ':' && n < num_io_irqs) {
		addr = (uintptr_t)strtouq(end + 1, NULL, 16);
		isrc = intr_lookup_source((int)n);
		vs = (struct xenrs_vsrc *)isrc;
		/*
		 * Ours only if the registered source is at the recorded address and its PIC is
		 * the one that follows it (is_pic is read inside struct intsrc, so a source of
		 * another kind that a stale or forged value names is never read beyond it).
		 */
		if (isrc != NULL && (uintptr_t)isrc == addr &&
		    isrc->is_pic == &vs->vs_pic) {
			xenrs_vsrc_methods(vs);
			mtx_lock(&isrc->is_event->ie_lock);
			isrc->is_event->ie_post_ithread =
			    (void (*)(void *))vs->vs_pic.pic_enable_source;
			isrc->is_event->ie_post_filter =
			    (void (*)(void *))vs->vs_pic.pic_eoi_source;
			mtx_unlock(&isrc->is_event->ie_lock);
			xenrs_vsrc = vs;
			*irq = vs->vs_irq;
			error = 0;
		}
	}
	freeenv(env);
	return (error);
}

/* Registers a new source at `irq` (which xenrs_kpi_irq_used() said is free). */
int
xenrs_kpi_vec_source_create(uint32_t irq)
{
	struct xenrs_vsrc *vs;
	struct intr_event *ie;
	char value[40];
	int error;

	if (irq >= num_io_irqs)
		return (EINVAL);
	vs = malloc(sizeof(*vs), M_DEVBUF, M_WAITOK | M_ZERO);
	vs->vs_irq = irq;
	vs->vs_taken = vs;
	vs->vs_isrc.is_pic = &vs->vs_pic;
	xenrs_vsrc_methods(vs);
	error = intr_register_pic(&vs->vs_pic);
	if (error != 0) {
		free(vs, M_DEVBUF);
		return (error);
	}
	error = intr_register_source(&vs->vs_isrc);
	if (error != 0) {
		/*
		 * The PIC is in the kernel's list for good: keep its memory. With no source it
		 * is only ever asked for the NULL suspend/resume methods.
		 */
		printf("xen: upcall: intr_register_source(irq %u): %d\n", irq,
		    error);
		return (error);
	}
	ie = vs->vs_isrc.is_event;
	mtx_lock(&ie->ie_lock);
	ie->ie_assign_cpu = NULL;
	ie->ie_cpu = 0;
	mtx_unlock(&ie->ie_lock);
	snprintf(value, sizeof(value), "%u:%jx", irq, (uintmax_t)(uintptr_t)vs);
	(void)kern_setenv(XENRS_VSRC_ENV, value);
	xenrs_vsrc = vs;
	return (0);
}

int
xenrs_kpi_vec_handler_add(void)
{
	if (xenrs_vsrc == NULL || xenrs_vsrc_cookie != NULL)
		return (EINVAL);
	return (intr_add_handler(&xenrs_vsrc->vs_isrc, "xenrs upcall",
	    xenrs_upcall_filter, NULL, NULL, INTR_TYPE_MISC | INTR_MPSAFE,
	    &xenrs_vsrc_cookie, 0));
}

void
xenrs_kpi_vec_handler_remove(void)
{
	if (xenrs_vsrc_cookie == NULL)
		return;
	(void)intr_remove_handler(xenrs_vsrc_cookie);
	xenrs_vsrc_cookie = NULL;
}

uint32_t
xenrs_kpi_bsp_apic_id(void)
{
	/* CPU 0 is the boot CPU, which is Xen's vCPU 0 (the only one Xen starts). */
	return ((uint32_t)pcpu_find(0)->pc_apic_id);
}

uint32_t
xenrs_kpi_apic_alloc_vector(uint32_t apic_id, uint32_t irq)
{
	return (apic_alloc_vector(apic_id, irq));
}

void
xenrs_kpi_apic_enable_vector(uint32_t apic_id, uint32_t vector)
{
	apic_enable_vector(apic_id, vector);
}

void
xenrs_kpi_apic_free_vector(uint32_t apic_id, uint32_t vector, uint32_t irq)
{
	apic_free_vector(apic_id, vector, irq);
}

static int
xenrs_pci_probe(device_t dev)
{
	uintptr_t devid;

	if (BUS_READ_IVAR(device_get_parent(dev), dev, XENRS_PCI_IVAR_DEVID,
	    &devid) != 0)
		return (ENXIO);
	if (devid != (((uintptr_t)XENRS_PCI_DEVICE << 16) | XENRS_PCI_VENDOR))
		return (ENXIO);
	device_set_desc(dev, "Xen platform device (xen-freebsd-rs)");
	return (BUS_PROBE_DEFAULT);
}

static int
xenrs_pci_attach(device_t dev)
{
	xenrs_pci_dev = dev;
	return (0);
}

static int
xenrs_pci_detach(device_t dev __unused)
{
	/* xen.ko's upcall still uses the interrupt: unload xen first (it tears it down). */
	if (xenrs_irq != NULL)
		return (EBUSY);
	xenrs_pci_dev = NULL;
	return (0);
}

static device_method_t xenrs_pci_methods[] = {
	DEVMETHOD(device_probe,		xenrs_pci_probe),
	DEVMETHOD(device_attach,	xenrs_pci_attach),
	DEVMETHOD(device_detach,	xenrs_pci_detach),
	DEVMETHOD_END
};

static driver_t xenrs_pci_driver = {
	"xenrs_pci",
	xenrs_pci_methods,
	0,
};

DRIVER_MODULE(xenrs_pci, pci, xenrs_pci_driver, NULL, NULL);

/*
 * The Dom0 character devices /dev/xen/{evtchn,xenstore,privcmd,xenstored,gntdev}: the cdevsw entry points
 * keep a struct xenrs_cfile per open (cdevpriv), move bytes with uiomove(9), sleep for
 * blocking reads and record selects; the device logic is the Rust side (src/cdev.rs).
 */
#include <sys/conf.h>
#include <sys/fcntl.h>
#include <sys/poll.h>
#include <sys/selinfo.h>
#include <sys/uio.h>
#include <sys/rwlock.h>
#include <vm/vm_param.h>
#include <vm/vm_object.h>
#include <vm/vm_page.h>
#include <vm/vm_pager.h>
#include <vm/vm_map.h>

#define	XENRS_NCDEV		5
#define	XENRS_KIND_PRIVCMD	2
#define	XENRS_KIND_GNTDEV	4
#define	XENRS_CDEV_CHUNK	8192

struct xenrs_cfile {
	uint64_t	handle;
	struct selinfo	sel;
};

int	xenrs_cdev_open(int kind, void *cookie, uint64_t *out);
void	xenrs_cdev_close(uint64_t handle);
int	xenrs_cdev_read(uint64_t handle, uint8_t *buf, size_t len, size_t *done);
int	xenrs_cdev_write(uint64_t handle, const uint8_t *buf, size_t len,
	    size_t *done);
int	xenrs_cdev_ioctl(uint64_t handle, uint64_t cmd, uint8_t *data, size_t len);
int	xenrs_cdev_readable(uint64_t handle);
int	xenrs_cdev_mmap_paddr(int kind, uint64_t offset, uint64_t *paddr);

static struct cdev *xenrs_cdev[XENRS_NCDEV];

void
xenrs_kpi_cfile_wakeup(void *cookie)
{
	struct xenrs_cfile *cf = cookie;

	wakeup(cf);
	selwakeup(&cf->sel);
}

int
xenrs_kpi_copyin(uint64_t uaddr, void *kaddr, size_t len)
{
	return (copyin((const void *)(uintptr_t)uaddr, kaddr, len));
}

int
xenrs_kpi_copyout(const void *kaddr, uint64_t uaddr, size_t len)
{
	return (copyout(kaddr, (void *)(uintptr_t)uaddr, len));
}

static void
xenrs_cfile_dtor(void *arg)
{
	struct xenrs_cfile *cf = arg;

	xenrs_cdev_close(cf->handle);
	seldrain(&cf->sel);
	free(cf, M_XENRS);
}

static int
xenrs_d_open(struct cdev *dev, int oflags __unused, int devtype __unused,
    struct thread *td __unused)
{
	struct xenrs_cfile *cf;
	int error;

	cf = malloc(sizeof(*cf), M_XENRS, M_WAITOK | M_ZERO);
	error = xenrs_cdev_open((int)(intptr_t)dev->si_drv1, cf, &cf->handle);
	if (error != 0) {
		free(cf, M_XENRS);
		return (error);
	}
	error = devfs_set_cdevpriv(cf, xenrs_cfile_dtor);
	if (error != 0)
		xenrs_cfile_dtor(cf);
	return (error);
}

static int
xenrs_d_read(struct cdev *dev __unused, struct uio *uio, int ioflag)
{
	struct xenrs_cfile *cf;
	uint8_t *buf;
	size_t len, done;
	int error;

	error = devfs_get_cdevpriv((void **)&cf);
	if (error != 0)
		return (error);
	len = MIN((size_t)uio->uio_resid, XENRS_CDEV_CHUNK);
	if (len == 0)
		return (0);
	buf = malloc(len, M_XENRS, M_WAITOK);
	for (;;) {
		done = 0;
		error = xenrs_cdev_read(cf->handle, buf, len, &done);
		if (error != EAGAIN)
			break;
		if ((ioflag & O_NONBLOCK) != 0) {
			error = EWOULDBLOCK;
			break;
		}
		/* A wakeup between the read and the sleep costs at most the timeout. */
		error = tsleep(cf, PCATCH, "xenrsrd", MAX(1, hz / 10));
		if (error != 0 && error != EWOULDBLOCK)
			break;
	}
	if (error == 0 && done > 0)
		error = uiomove(buf, (int)done, uio);
	free(buf, M_XENRS);
	return (error);
}

static int
xenrs_d_write(struct cdev *dev __unused, struct uio *uio, int ioflag)
{
	struct xenrs_cfile *cf;
	uint8_t *buf;
	size_t len, done;
	int error;

	error = devfs_get_cdevpriv((void **)&cf);
	if (error != 0)
		return (error);
	len = MIN((size_t)uio->uio_resid, XENRS_CDEV_CHUNK);
	if (len == 0)
		return (0);
	buf = malloc(len, M_XENRS, M_WAITOK);
	error = uiomove(buf, (int)len, uio);
	for (; error == 0;) {
		done = 0;
		error = xenrs_cdev_write(cf->handle, buf, len, &done);
		if (error != EAGAIN)
			break;
		if ((ioflag & O_NONBLOCK) != 0) {
			error = EWOULDBLOCK;
			break;
		}
		error = tsleep(cf, PCATCH, "xenrswr", MAX(1, hz / 10));
		if (error == EWOULDBLOCK)
			error = 0;
	}
	/* What the device did not consume is still the caller's to write. */
	if (done < len)
		uio->uio_resid += (ssize_t)(len - done);
	free(buf, M_XENRS);
	return (error);
}

static int
xenrs_d_ioctl(struct cdev *dev __unused, u_long cmd, caddr_t data,
    int fflag __unused, struct thread *td __unused)
{
	struct xenrs_cfile *cf;
	int error;

	error = devfs_get_cdevpriv((void **)&cf);
	if (error != 0)
		return (error);
	return (xenrs_cdev_ioctl(cf->handle, (uint64_t)cmd, (uint8_t *)data,
	    IOCPARM_LEN(cmd)));
}

static int
xenrs_d_poll(struct cdev *dev __unused, int events, struct thread *td)
{
	struct xenrs_cfile *cf;
	int revents;

	if (devfs_get_cdevpriv((void **)&cf) != 0)
		return (events & (POLLHUP | POLLIN | POLLRDNORM | POLLOUT | POLLWRNORM));
	revents = events & (POLLOUT | POLLWRNORM);
	if ((events & (POLLIN | POLLRDNORM)) != 0) {
		if (xenrs_cdev_readable(cf->handle))
			revents |= events & (POLLIN | POLLRDNORM);
		else
			selrecord(td, &cf->sel);
	}
	return (revents);
}

/* /dev/xen/xenstored: the local xenstore ring page (the device pager maps it). */
static int
xenrs_d_mmap(struct cdev *dev, vm_ooffset_t offset, vm_paddr_t *paddr,
    int nprot __unused, vm_memattr_t *memattr __unused)
{
	uint64_t pa;
	int error;

	error = xenrs_cdev_mmap_paddr((int)(intptr_t)dev->si_drv1,
	    (uint64_t)offset, &pa);
	if (error == 0)
		*paddr = (vm_paddr_t)pa;
	return (error);
}

/*
 * /dev/xen/gntdev and /dev/xen/privcmd mmap (src/gntdev.rs): each mmap(2) is one device-pager VM object with a
 * handle of its own (so every object's destructor ends exactly one mmap in the Rust core).
 * A fault asks the Rust side for the physical address of the page (an allocated page, or a
 * frame a foreign grant is mapped at) and hands the VM system a fictitious page for it; the
 * grants are unmapped only after the destructor ran, when no user mapping is left.
 */
int	xenrs_gntdev_mmap(uint64_t handle, uint64_t offset, uint64_t size, int writable,
	    uint64_t *object, uint64_t *pages);
int	xenrs_gntdev_fault(uint64_t object, uint64_t offset, uint64_t *paddr);
void	xenrs_gntdev_object_released(uint64_t object);

struct xenrs_gobj {
	uint64_t	id;
};

static int
xenrs_gpg_ctor(void *handle __unused, vm_ooffset_t size __unused,
    vm_prot_t prot __unused, vm_ooffset_t foff __unused, struct ucred *cred __unused,
    u_short *color)
{
	*color = 0;
	return (0);
}

static void
xenrs_gpg_dtor(void *handle)
{
	struct xenrs_gobj *go = handle;

	xenrs_gntdev_object_released(go->id);
	free(go, M_XENRS);
}

static int
xenrs_gpg_fault(vm_object_t object, vm_ooffset_t offset, int prot __unused,
    vm_page_t *mres)
{
	struct xenrs_gobj *go = object->handle;
	vm_page_t page;
	uint64_t pa;
	int error;

	/* The Rust side takes sx locks: not while holding the object's rwlock. */
	VM_OBJECT_WUNLOCK(object);
	error = xenrs_gntdev_fault(go->id, (uint64_t)offset, &pa);
	if (error != 0) {
		VM_OBJECT_WLOCK(object);
		return (VM_PAGER_FAIL);
	}
	if (((*mres)->flags & PG_FICTITIOUS) != 0) {
		/* Already a fake page of ours: point it at the frame again. */
		VM_OBJECT_WLOCK(object);
		page = *mres;
		vm_page_updatefake(page, (vm_paddr_t)pa, VM_MEMATTR_DEFAULT);
	} else {
		/* A fake page (created busied) replaces the placeholder, which is freed. */
		page = vm_page_getfake((vm_paddr_t)pa, VM_MEMATTR_DEFAULT);
		VM_OBJECT_WLOCK(object);
		vm_page_replace(page, object, (*mres)->pindex, *mres);
		*mres = page;
	}
	vm_page_valid(page);
	return (VM_PAGER_OK);
}

static const struct cdev_pager_ops xenrs_gntdev_pg_ops = {
	.cdev_pg_fault =	xenrs_gpg_fault,
	.cdev_pg_ctor =		xenrs_gpg_ctor,
	.cdev_pg_dtor =		xenrs_gpg_dtor,
};

static int
xenrs_d_mmap_single(struct cdev *dev, vm_ooffset_t *offset, vm_size_t size,
    vm_object_t *object, int nprot)
{
	struct xenrs_cfile *cf;
	struct xenrs_gobj *go;
	vm_object_t obj;
	uint64_t id, pages;
	int error;

	/* Other devices: the plain d_mmap below. */
	if ((int)(intptr_t)dev->si_drv1 != XENRS_KIND_GNTDEV &&
	    (int)(intptr_t)dev->si_drv1 != XENRS_KIND_PRIVCMD)
		return (ENODEV);
	error = devfs_get_cdevpriv((void **)&cf);
	if (error != 0)
		return (error);
	error = xenrs_gntdev_mmap(cf->handle, (uint64_t)*offset, (uint64_t)size,
	    (nprot & VM_PROT_WRITE) != 0, &id, &pages);
	if (error != 0)
		return (error);
	go = malloc(sizeof(*go), M_XENRS, M_WAITOK | M_ZERO);
	go->id = id;
	obj = cdev_pager_allocate(go, OBJT_DEVICE, &xenrs_gntdev_pg_ops,
	    (vm_ooffset_t)pages * PAGE_SIZE, nprot, 0, curthread->td_ucred);
	if (obj == NULL) {
		xenrs_gpg_dtor(go);
		return (EINVAL);
	}
	*offset = 0;
	*object = obj;
	return (0);
}

/*
 * IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR and privcmd's MMAPBATCH: the object of ours mapped at
 * vaddr in the calling process, and that map entry's start and size.
 */
int
xenrs_kpi_gntdev_lookup_vaddr(uint64_t vaddr, uint64_t *object, uint64_t *start,
    uint64_t *size)
{
	vm_map_t map = &curproc->p_vmspace->vm_map;
	vm_map_entry_t entry;
	vm_object_t obj;
	vm_pindex_t pindex;
	vm_prot_t prot;
	boolean_t wired;
	int error = ENOENT;

	if (vm_map_lookup(&map, (vm_offset_t)vaddr, VM_PROT_NONE, &entry, &obj,
	    &pindex, &prot, &wired) != KERN_SUCCESS)
		return (ENOENT);
	if (obj != NULL && obj->type == OBJT_DEVICE &&
	    obj->un_pager.devp.ops == &xenrs_gntdev_pg_ops) {
		*object = ((struct xenrs_gobj *)obj->handle)->id;
		*start = (uint64_t)entry->start;
		*size = (uint64_t)(entry->end - entry->start);
		error = 0;
	}
	vm_map_lookup_done(map, entry);
	return (error);
}

static struct cdevsw xenrs_cdevsw = {
	.d_version =	D_VERSION,
	.d_open =	xenrs_d_open,
	.d_read =	xenrs_d_read,
	.d_write =	xenrs_d_write,
	.d_ioctl =	xenrs_d_ioctl,
	.d_poll =	xenrs_d_poll,
	.d_mmap =	xenrs_d_mmap,
	.d_mmap_single = xenrs_d_mmap_single,
	.d_name =	"xenrs",
};

void
xenrs_kpi_cdevs_destroy(void)
{
	int i;

	for (i = 0; i < XENRS_NCDEV; i++) {
		if (xenrs_cdev[i] != NULL) {
			destroy_dev(xenrs_cdev[i]);
			xenrs_cdev[i] = NULL;
		}
	}
}

int
xenrs_kpi_cdevs_create(uint32_t mask)
{
	/* Indices are src/cdev.rs's KIND_* values. */
	static const char *names[XENRS_NCDEV] = { "evtchn", "xenstore", "privcmd",
	    "xenstored", "gntdev" };
	struct make_dev_args args;
	int error, i;

	for (i = 0; i < XENRS_NCDEV; i++) {
		if ((mask & (1u << i)) == 0)
			continue;
		make_dev_args_init(&args);
		args.mda_devsw = &xenrs_cdevsw;
		args.mda_flags = MAKEDEV_WAITOK | MAKEDEV_CHECKNAME;
		args.mda_uid = UID_ROOT;
		args.mda_gid = GID_WHEEL;
		args.mda_mode = 0600;
		args.mda_si_drv1 = (void *)(intptr_t)i;
		error = make_dev_s(&args, &xenrs_cdev[i], "xen/%s", names[i]);
		if (error != 0) {
			printf("xen: devices: make_dev_s(xen/%s): %d\n", names[i],
			    error);
			xenrs_kpi_cdevs_destroy();
			return (error);
		}
	}
	return (0);
}
