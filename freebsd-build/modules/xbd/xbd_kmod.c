/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xbd.ko: module registration and the thin FreeBSD side of the disk glue: disk(9) objects,
 * the d_strategy entry, biodone(9), the physical address of a buffer page, a mutex per
 * disk and the per-disk sysctl tree dev.xbd.<unit>. Every decision (what a bio becomes,
 * bouncing, completion, resize, detach) is the Rust library's (src/disk.rs); each function
 * here is a few lines of KPI with fixed arity, so the host tests replace them with fakes.
 */
#include "xenrs_module.h"

#include <sys/bio.h>
#include <sys/lock.h>
#include <sys/malloc.h>
#include <sys/mutex.h>
#include <sys/sysctl.h>
#include <sys/taskqueue.h>
#include <sys/sx.h>

#include <geom/geom_disk.h>

#include <vm/vm.h>
#include <vm/pmap.h>

XENRS_DRIVER_MODULE(xbd);

/*
 * What the Rust side sees of a bio (src/sys.rs `Cmd`): the command, translated here so no
 * BIO_* value is duplicated in Rust.
 */
#define	XENRS_XBD_READ		0
#define	XENRS_XBD_WRITE		1
#define	XENRS_XBD_FLUSH		2
#define	XENRS_XBD_DELETE	3
#define	XENRS_XBD_OTHER		4

/* Disk flags as the Rust side passes them (src/sys.rs `DiskFlags`). */
#define	XENRS_XBD_CANDELETE	0x1
#define	XENRS_XBD_CANFLUSH	0x2
#define	XENRS_XBD_READONLY	0x4

/* Defined by the Rust library. */
void	xenrs_xbd_strategy(void *softc, struct bio *bp, int cmd, int ordered,
	    int64_t offset, int64_t length, void *data);
int	xenrs_xbd_dev_stat(void *softc, int which, uint64_t *out);

static void
xbd_kmod_strategy(struct bio *bp)
{
	int cmd;

	switch (bp->bio_cmd) {
	case BIO_READ:
		cmd = XENRS_XBD_READ;
		break;
	case BIO_WRITE:
		cmd = XENRS_XBD_WRITE;
		break;
	case BIO_FLUSH:
		cmd = XENRS_XBD_FLUSH;
		break;
	case BIO_DELETE:
		cmd = XENRS_XBD_DELETE;
		break;
	default:
		cmd = XENRS_XBD_OTHER;
		break;
	}
	xenrs_xbd_strategy(bp->bio_disk->d_drv1, bp, cmd,
	    (bp->bio_flags & BIO_ORDERED) != 0, bp->bio_offset, bp->bio_length,
	    bp->bio_data);
}

/* Completes a bio: error 0 or an errno, resid the bytes not transferred. */
void
xenrs_xbd_biodone(struct bio *bp, int error, int64_t resid)
{
	bp->bio_resid = resid;
	if (error != 0) {
		bp->bio_error = error;
		bp->bio_flags |= BIO_ERROR;
	}
	biodone(bp);
}

/* The physical address of a mapped kernel virtual address (a bio's data). */
uint64_t
xenrs_xbd_vtophys(const void *va)
{
	return (vtophys(va));
}

struct disk *
xenrs_xbd_disk_create(void *softc, u_int unit, u_int sectorsize,
    int64_t mediasize, u_int maxsize, int64_t stripesize, u_int flags,
    const char *descr)
{
	struct disk *dp;

	dp = disk_alloc();
	dp->d_name = "xbd";
	dp->d_unit = unit;
	dp->d_drv1 = softc;
	dp->d_strategy = xbd_kmod_strategy;
	dp->d_sectorsize = sectorsize;
	dp->d_mediasize = mediasize;
	dp->d_maxsize = maxsize;
	dp->d_stripesize = stripesize;
	dp->d_flags = 0;
	if ((flags & XENRS_XBD_CANDELETE) != 0)
		dp->d_flags |= DISKFLAG_CANDELETE;
	if ((flags & XENRS_XBD_CANFLUSH) != 0)
		dp->d_flags |= DISKFLAG_CANFLUSHCACHE;
	if ((flags & XENRS_XBD_READONLY) != 0)
		dp->d_flags |= DISKFLAG_WRITE_PROTECT;
	strlcpy(dp->d_descr, descr, sizeof(dp->d_descr));
	disk_create(dp, DISK_VERSION);
	return (dp);
}

int
xenrs_xbd_disk_resize(struct disk *dp, int64_t mediasize)
{
	dp->d_mediasize = mediasize;
	return (disk_resize(dp, M_NOWAIT));
}

void
xenrs_xbd_disk_destroy(struct disk *dp)
{
	disk_destroy(dp);
}

/*
 * The device's own taskqueue thread: event work (responses, received frames) runs here, not
 * in xen.ko's event thread, whose handler only sets a flag and enqueues the task. The task
 * may sleep, so it waits for the device lock like a xenbus callback.
 */
void	xenrs_xbd_task(void *softc);

struct xenrs_xbd_tq {
	struct taskqueue	*tq;
	struct task		 task;
	struct timeout_task	 later;
};

static void
xbd_kmod_task(void *arg, int pending __unused)
{
	xenrs_xbd_task(arg);
}

struct xenrs_xbd_tq *
xenrs_xbd_tq_new(void *softc, u_int unit)
{
	struct xenrs_xbd_tq *t;

	t = malloc(sizeof(*t), M_DEVBUF, M_WAITOK | M_ZERO);
	TASK_INIT(&t->task, 0, xbd_kmod_task, softc);
	t->tq = taskqueue_create("xbd", M_WAITOK, taskqueue_thread_enqueue,
	    &t->tq);
	TIMEOUT_TASK_INIT(t->tq, &t->later, 0, xbd_kmod_task, softc);
	taskqueue_start_threads(&t->tq, 1, PRIBIO, "xbd%u taskq", unit);
	return (t);
}

void
xenrs_xbd_tq_enqueue(struct xenrs_xbd_tq *t)
{
	taskqueue_enqueue(t->tq, &t->task);
}

/*
 * The task again in ms milliseconds (grants the backend still holds on bios' pages are
 * retried from here; an earlier request still pending is kept).
 */
void
xenrs_xbd_tq_enqueue_later(struct xenrs_xbd_tq *t, u_int ms)
{
	taskqueue_enqueue_timeout(t->tq, &t->later, MAX(1, ms * hz / 1000));
}

/* Waits for a run in progress, then frees the thread and the queue. */
void
xenrs_xbd_tq_free(struct xenrs_xbd_tq *t)
{
	taskqueue_drain_timeout(t->tq, &t->later);
	taskqueue_drain(t->tq, &t->task);
	taskqueue_free(t->tq);
	free(t, M_DEVBUF);
}

/*
 * Two locks per disk. The device lock is an sx(9) lock: the xenbus callbacks hold it while
 * they talk to xenstore, allocate pages and unbind event channels, all of which may sleep.
 * d_strategy (GEOM's g_down thread must not sleep) and the event handler only try it: a bio
 * that finds it taken waits in a queue guarded by the MTX_DEF mutex below (held only for a
 * push or a pop), and whoever holds the device lock drains that queue before it is done.
 */
struct sx *
xenrs_xbd_sx_new(void)
{
	struct sx *sx;

	sx = malloc(sizeof(*sx), M_DEVBUF, M_NOWAIT | M_ZERO);
	if (sx != NULL)
		sx_init(sx, "xbd");
	return (sx);
}

void
xenrs_xbd_sx_xlock(struct sx *sx)
{
	sx_xlock(sx);
}

/* 1 when taken, 0 when another thread holds it. */
int
xenrs_xbd_sx_try_xlock(struct sx *sx)
{
	return (sx_try_xlock(sx));
}

void
xenrs_xbd_sx_xunlock(struct sx *sx)
{
	sx_xunlock(sx);
}

void
xenrs_xbd_sx_free(struct sx *sx)
{
	sx_destroy(sx);
	free(sx, M_DEVBUF);
}

/* The queue of bios waiting for the device lock. */

struct mtx *
xenrs_xbd_lock_new(void)
{
	struct mtx *m;

	m = malloc(sizeof(*m), M_DEVBUF, M_NOWAIT | M_ZERO);
	if (m != NULL)
		mtx_init(m, "xbd", NULL, MTX_DEF);
	return (m);
}

void
xenrs_xbd_lock(struct mtx *m)
{
	mtx_lock(m);
}

void
xenrs_xbd_unlock(struct mtx *m)
{
	mtx_unlock(m);
}

void
xenrs_xbd_lock_free(struct mtx *m)
{
	mtx_destroy(m);
	free(m, M_DEVBUF);
}

/*
 * dev.xbd.<unit>.<leaf>: numeric statistics read from the Rust device. The indices are
 * `DevStat` in src/disk.rs; a unit test there checks that both lists agree.
 */
static const struct {
	const char *name;
	const char *descr;
} xbd_kmod_leaves[] = {
	{ "bios", "Bios accepted" },
	{ "completed", "Bios completed" },
	{ "errors", "Bios completed with an error" },
	{ "bounced", "Bios bounced through pages of ours (unaligned buffers)" },
	{ "waits", "Bios queued because the ring was full" },
	{ "requests", "Ring requests issued" },
	{ "reissued", "Requests re-issued after a reconnection" },
	{ "connections", "Connections to the backend" },
	{ "in_flight", "Bios accepted and not completed" },
	{ "sectors", "Size in 512-byte sectors" },
};

static SYSCTL_NODE(_dev, OID_AUTO, xbd, CTLFLAG_RD | CTLFLAG_MPSAFE, 0,
    "Xen PV block frontend disks (xen-freebsd-rs)");

static int
xbd_kmod_sysctl(SYSCTL_HANDLER_ARGS)
{
	uint64_t value;
	int error;

	value = 0;
	error = xenrs_xbd_dev_stat(arg1, (int)arg2, &value);
	if (error != 0)
		return (error);
	return (sysctl_handle_64(oidp, &value, 0, req));
}

struct sysctl_ctx_list *
xenrs_xbd_sysctl_attach(void *softc, u_int unit)
{
	struct sysctl_ctx_list *ctx;
	struct sysctl_oid *node;
	char name[16];
	u_int i;

	ctx = malloc(sizeof(*ctx), M_DEVBUF, M_NOWAIT | M_ZERO);
	if (ctx == NULL)
		return (NULL);
	sysctl_ctx_init(ctx);
	snprintf(name, sizeof(name), "%u", unit);
	node = SYSCTL_ADD_NODE(ctx, SYSCTL_STATIC_CHILDREN(_dev_xbd), OID_AUTO,
	    name, CTLFLAG_RD | CTLFLAG_MPSAFE, NULL, "Xen PV disk");
	if (node == NULL) {
		sysctl_ctx_free(ctx);
		free(ctx, M_DEVBUF);
		return (NULL);
	}
	for (i = 0; i < nitems(xbd_kmod_leaves); i++)
		SYSCTL_ADD_PROC(ctx, SYSCTL_CHILDREN(node), OID_AUTO,
		    xbd_kmod_leaves[i].name,
		    CTLTYPE_U64 | CTLFLAG_RD | CTLFLAG_MPSAFE, softc, i,
		    xbd_kmod_sysctl, "QU", xbd_kmod_leaves[i].descr);
	return (ctx);
}

/* Removes the tree; sysctl waits for handlers that are running. */
void
xenrs_xbd_sysctl_detach(struct sysctl_ctx_list *ctx)
{
	sysctl_ctx_free(ctx);
	free(ctx, M_DEVBUF);
}
