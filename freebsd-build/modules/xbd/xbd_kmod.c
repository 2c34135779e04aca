/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xbd.ko: module registration and the thin FreeBSD side of the disk glue: disk(9) objects,
 * the d_strategy entry, biodone(9), the physical address of a buffer page and the per-disk
 * sysctl tree dev.xbd.<unit> (its locks and taskqueue are xen.ko's shared glue:
 * freebsd_kpi::sync and ::taskqueue, docs/FREEBSD.md). Every decision (what a bio becomes,
 * bouncing, completion, resize, detach) is the Rust library's (src/disk.rs); each function
 * here is a few lines of KPI with fixed arity, so the host tests replace them with fakes.
 */
#include "xenrs_module.h"
#include "xenrs_glue.h"

#include <sys/bio.h>
#include <sys/malloc.h>
#include <sys/sysctl.h>

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
 * dev.xbd.<unit>.<leaf>: numeric statistics read from the Rust device. The indices are
 * `DevStat` in src/disk.rs; a unit test there checks that both lists agree.
 */
static const struct xenrs_sysctl_leaf xbd_kmod_leaves[] = {
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

XENRS_SYSCTL_DEV(xbd, xbd_kmod_leaves,
    "Xen PV block frontend disks (xen-freebsd-rs)",
    "Xen PV disk");
