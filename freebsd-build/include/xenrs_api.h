/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xen-freebsd-rs: the services xen.ko exports to the driver modules (xbd, xbbd, xn, xnb).
 *
 * The symbols below are listed in freebsd-build/modules/xen/export_syms; a driver module
 * reaches them because it declares MODULE_DEPEND(<m>, xen, 1, 1, 1). The Rust side of the
 * drivers does not call them directly but through the crate xenrs-api
 * (freebsd-build/xen-api), which wraps them in safe types; the declarations are here so the
 * verifier and a C reader see one authoritative list.
 *
 * Conventions:
 * - Every function returning int returns 0 or a FreeBSD errno. ENXIO: xen.ko is not (or no
 *   longer) up. EINVAL: a bad argument. ENOMEM: out of memory. EBUSY: still in use.
 * - A call that may sleep says so; none of them may be made from an interrupt filter.
 *   Event handlers run in xen.ko's event thread (a taskqueue thread): they may take default
 *   mutexes and enqueue tasks but must not sleep for long.
 * - Xen's own errors (negative Linux-numbered errnos of hypercalls) never cross this ABI raw,
 *   except through xenrs_hypercall, which is the hypercall itself.
 * - Every registration holds xen.ko: kldunload xen is refused (EBUSY) until it is undone.
 *
 * Versioning: XENRS_API_VERSION changes whenever a signature or a meaning here changes;
 * xenrs_api_version() returns the version xen.ko implements and drivers refuse to load on a
 * mismatch (MODULE_DEPEND's version pins the module, this pins the ABI inside it).
 */
#ifndef _XENRS_API_H_
#define _XENRS_API_H_

#include <sys/types.h>

#define	XENRS_API_VERSION	1

uint32_t	xenrs_api_version(void);

/*
 * Platform facts. xenrs_domid: our domain id (DOMID_SELF-free); 0 when xen.ko is not up.
 */
uint32_t	xenrs_domid(void);

/*
 * The raw hypercall through xen.ko's hypercall page: op is __HYPERVISOR_*, args[0..4] the
 * five argument registers. Returns Xen's return value (>= 0, or -errno in Xen's numbering),
 * or -38 (Xen's ENOSYS) when xen.ko is not up. Pointer arguments must be kernel virtual
 * addresses valid for the call (Xen reads them through our page tables). Does not sleep.
 * The drivers build the typed hypercalls (grant map/unmap/copy, evtchn send) on this with
 * xen-kmod's marshalling, so one trap serves every module.
 */
intptr_t	xenrs_hypercall(uint32_t op, const uintptr_t args[5]);

/*
 * xenstore. A request is a complete xs_wire message (header + payload; req_id is ignored,
 * tx_id names a transaction or 0); the reply is a complete message written to reply
 * (capacity cap, at least 16 + 4096 bytes), its length in *reply_len. A daemon error comes
 * back as an XS_ERROR message (return value 0); the return value is non-zero only for
 * local failures: EINVAL (malformed request), EIO (connection lost), ENXIO. May sleep.
 */
int	xenrs_xs_call(const uint8_t *req, size_t len, uint8_t *reply, size_t cap,
	    size_t *reply_len);

/*
 * xenbus drivers. A registration is a device type and role plus one callback; xen.ko calls
 * it, always from its xenbus thread and never concurrently for one registration:
 *	XENRS_XB_START	first: watch the root, probe what exists (xenrs-api runs a
 *			xen_xenbus::Bus in the driver module and starts it here); in
 *			domain 0 it comes again when xenstored starts after the
 *			registration, so starting twice must be harmless (it is for Bus);
 *	XENRS_XB_WATCH	a watch of this registration fired: watch id, path, missed (1 when
 *			events were dropped and everything watched must be re-read);
 *	XENRS_XB_STOP	last, once, from xenrs_xenbus_unregister: remove every device;
 *	XENRS_XB_KICK	after xenrs_xenbus_kick (several kicks before it runs give one):
 *			the driver's chance to act on its devices with the store from
 *			work found elsewhere (an event handler, a timer).
 * Watches are set with xenrs_xs_watch on the registration; they are removed at the latest
 * when it is unregistered. role: 0 frontend (device/<type>), 1 backend (backend/<type>).
 */
#define	XENRS_XB_START		0
#define	XENRS_XB_WATCH		1
#define	XENRS_XB_STOP		2
#define	XENRS_XB_KICK		3

#define	XENRS_XB_FRONTEND	0
#define	XENRS_XB_BACKEND	1

struct xenrs_xenbus_reg;
typedef void xenrs_xenbus_cb_t(void *arg, int kind, uint32_t watch,
    const char *path, int missed);

/*
 * Registers and queues XENRS_XB_START; *out is written before any callback can run (the
 * callback may read it through arg). EEXIST: that role and type are taken.
 */
int	xenrs_xenbus_register(uint32_t role, const char *devtype,
	    xenrs_xenbus_cb_t *cb, void *arg, struct xenrs_xenbus_reg **out);
/*
 * Runs XENRS_XB_STOP (waiting for a callback in progress), removes the registration's
 * watches and frees it; afterwards cb is never called again. May sleep. Must not be called
 * from the registration's own callback (EDEADLK).
 */
int	xenrs_xenbus_unregister(struct xenrs_xenbus_reg *reg);
/*
 * Queues one XENRS_XB_KICK of reg (after its start). Callable from event handlers and any
 * thread (not a filter). ENOENT for a registration that is gone.
 */
int	xenrs_xenbus_kick(struct xenrs_xenbus_reg *reg);
/* A watch on path owned by reg; its events reach reg's callback. *watch: its id. */
int	xenrs_xs_watch(struct xenrs_xenbus_reg *reg, const char *path,
	    uint32_t *watch);
int	xenrs_xs_unwatch(struct xenrs_xenbus_reg *reg, uint32_t watch);

/*
 * Event channels. The handler runs in xen.ko's event thread with the port's number; after
 * xenrs_evtchn_unbind returns it never runs again (a run in progress is waited for).
 * Handlers should hand work to the driver's own taskqueue: every other port waits while one
 * runs (a xenstore call from a handler still completes, by polling the ring, but slowly).
 * Ports a peer can raise are throttled (masked for a while when they storm; counted in
 * hw.xenrs.evtchn.throttled). flags: XENRS_EVTCHN_AUTOMASK masks the port on every delivery
 * until xenrs_evtchn_unmask (for consumers that process events later).
 */
typedef void xenrs_evtchn_handler_t(void *arg, uint32_t port);

#define	XENRS_EVTCHN_AUTOMASK	0x1

int	xenrs_evtchn_alloc_unbound(uint32_t remote_domid, uint32_t flags,
	    xenrs_evtchn_handler_t *handler, void *arg, uint32_t *port);
int	xenrs_evtchn_bind_interdomain(uint32_t remote_domid, uint32_t remote_port,
	    uint32_t flags, xenrs_evtchn_handler_t *handler, void *arg, uint32_t *port);
int	xenrs_evtchn_notify(uint32_t port);
int	xenrs_evtchn_unmask(uint32_t port);
/*
 * Closes the port (ENOENT: not bound through this ABI). May sleep (waits for a handler run
 * in progress). EDEADLK from inside any event handler (the wait would be for itself):
 * defer the unbind to a task.
 */
int	xenrs_evtchn_unbind(uint32_t port);

/*
 * Our grant table. grant_access: let domid map or copy our frame gfn. end_access: revoke
 * now, EBUSY while the peer still maps it (the reference stays valid: try again later).
 * revoke: end access or, if still mapped, defer: xen.ko keeps the reference and releases it
 * when the peer lets go (*deferred = 1); the caller must then not reuse the page until
 * xenrs_grant_deferred_done(gref) says 1 — or simply leak it to xen.ko (the common case is a
 * page handed to xenrs_pages_free, which xen.ko holds back until the grant is gone).
 */
int	xenrs_grant_access(uint32_t domid, uint64_t gfn, int readonly, uint32_t *gref);
int	xenrs_grant_end_access(uint32_t gref);
int	xenrs_grant_revoke(uint32_t gref, int *deferred);

/*
 * Foreign grants. map: map domid's grant gref at a kernel address xen.ko chooses (a frame
 * given back to Xen for the purpose); *handle identifies the mapping, *va its address (one
 * page). unmap: undo; the frame returns to the kernel. copy: GNTTABOP_copy of n
 * struct gnttab_copy entries (the Xen ABI layout of this architecture), per-entry status
 * in each entry; returns EINVAL only for a malformed call.
 */
int	xenrs_grant_map(uint32_t domid, uint32_t gref, int readonly, uint64_t *handle,
	    void **va);
int	xenrs_grant_unmap(uint64_t handle);
int	xenrs_grant_copy(void *ops, uint32_t n);

/*
 * Pages: count physically contiguous, zeroed, page-aligned pages; *va their kernel address,
 * *gfn the first guest frame number. May sleep. free: a grant still live on one of the
 * pages is revoked first (and logged: it is a driver bug); pages a peer still maps (a
 * deferred revoke) are held back by xen.ko until the peer lets go, then freed. Held pages
 * and deferred references keep xen.ko loaded.
 */
int	xenrs_pages_alloc(uint32_t count, void **va, uint64_t *gfn);
void	xenrs_pages_free(void *va, uint32_t count);

#endif /* !_XENRS_API_H_ */
