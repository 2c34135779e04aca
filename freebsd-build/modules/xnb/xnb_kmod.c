/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xnb.ko: module registration and the thin FreeBSD side of the network backend: one ifnet
 * per guest vif (named xnb<domid>.<handle>, IFT_ETHER, so bridge(4) can hold it and put it in
 * promiscuous mode), its transmit/ioctl entry points (the bridge sends frames for the guest
 * through if_transmit), mbuf copies both ways, link state and the sysctl tree
 * dev.xnb.<unit> (its locks and taskqueue are xen.ko's shared glue). Every decision is the
 * Rust library's (src/vif.rs); each function here is a few lines of KPI with fixed arity, so
 * the host tests replace them with fakes.
 */
#include "xenrs_module.h"
#include "xenrs_glue.h"

#include <sys/malloc.h>
#include <sys/mbuf.h>
#include <sys/socket.h>
#include <sys/sockio.h>
#include <sys/sysctl.h>
#include <sys/time.h>

#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_var.h>
#include <net/if_types.h>

#include "xenrs_ifnet.h"

XENRS_DRIVER_MODULE(xnb);
XENRS_IFNET_GLUE(xnb);

/* What a packet asks of the offloads (src/vif.rs `tx`). */
#define	XENRS_XNB_TX_PARTIAL	0x1
#define	XENRS_XNB_TX_TSO4	0x2
#define	XENRS_XNB_TX_TSO6	0x4

/* xenrs_xnb_transmit kept the mbuf (src/sys.rs `KEPT`). */
#define	XENRS_XNB_KEPT	(-1)

/* Defined by the Rust library. */
int	xenrs_xnb_transmit(void *softc, struct mbuf *m, uint32_t len, uint32_t offload,
	    uint32_t flowid, int hashed);
int	xenrs_xnb_ioctl_mtu(void *softc, int mtu);

static int
xnb_kmod_transmit(if_t ifp, struct mbuf *m)
{
	uint32_t offload;
	int error;

	offload = 0;
	if ((m->m_pkthdr.csum_flags & (CSUM_TCP | CSUM_UDP | CSUM_TCP_IPV6 |
	    CSUM_UDP_IPV6)) != 0)
		offload |= XENRS_XNB_TX_PARTIAL;
	if ((m->m_pkthdr.csum_flags & CSUM_IP_TSO) != 0)
		offload |= XENRS_XNB_TX_TSO4;
	if ((m->m_pkthdr.csum_flags & CSUM_IP6_TSO) != 0)
		offload |= XENRS_XNB_TX_TSO6;
	/*
	 * The Rust side either keeps the mbuf (queued for the interface's lock holder, which
	 * frees it after copying it to the ring) or refuses it, and then it is ours to free.
	 */
	error = xenrs_xnb_transmit(if_getsoftc(ifp), m, m->m_pkthdr.len, offload,
	    m->m_pkthdr.flowid, M_HASHTYPE_GET(m) != M_HASHTYPE_NONE);
	if (error == XENRS_XNB_KEPT)
		return (0);
	m_freem(m);
	return (error);
}

/* Packets wait in the driver only while the interface's lock is taken (src/sys.rs). */
static void
xnb_kmod_qflush(if_t ifp __unused)
{
}

/* Nothing to start: the link follows the frontend's connection. */
static void
xnb_kmod_init(void *arg __unused)
{
}

static int
xnb_kmod_ioctl(if_t ifp, u_long cmd, caddr_t data)
{
	struct ifreq *ifr;
	int error;

	ifr = (struct ifreq *)data;
	switch (cmd) {
	case SIOCSIFMTU:
		error = xenrs_xnb_ioctl_mtu(if_getsoftc(ifp), ifr->ifr_mtu);
		if (error == 0)
			if_setmtu(ifp, ifr->ifr_mtu);
		return (error);
	case SIOCSIFFLAGS:
		/*
		 * Up/down and promiscuous (bridge(4) sets it on its members) need nothing here:
		 * every frame the bridge sends is for the guest, and every frame of the guest
		 * goes up.
		 */
		return (0);
	case SIOCSIFCAP:
		/* No offloads to switch (see src/vif.rs). */
		return (0);
	case SIOCADDMULTI:
	case SIOCDELMULTI:
		/* Multicast frames all go to the guest, which filters. */
		return (0);
	default:
		return (ether_ioctl(ifp, cmd, data));
	}
}

/*
 * The vif's interface: name is xnb<domid>.<handle> (kept by the ifnet as if_dname, so the
 * caller keeps it alive until xenrs_xnb_ifnet_destroy), no offloads, the fixed backend MAC.
 */
if_t
xenrs_xnb_ifnet_create(void *softc, const char *name, const uint8_t *mac, int mtu)
{
	if_t ifp;

	ifp = if_alloc(IFT_ETHER);
	if_setsoftc(ifp, softc);
	if_initname(ifp, name, IF_DUNIT_NONE);
	if_setflags(ifp, IFF_BROADCAST | IFF_SIMPLEX | IFF_MULTICAST);
	if_setinitfn(ifp, xnb_kmod_init);
	if_setioctlfn(ifp, xnb_kmod_ioctl);
	if_settransmitfn(ifp, xnb_kmod_transmit);
	if_setqflushfn(ifp, xnb_kmod_qflush);
	if_setcapabilities(ifp, 0);
	if_setcapenable(ifp, 0);
	if_sethwassist(ifp, 0);
	ether_ifattach(ifp, mac);
	if_setmtu(ifp, mtu);
	return (ifp);
}

/* Monotonic time in nanoseconds (the netback core's stall timer). */
uint64_t
xenrs_xnb_now_ns(void)
{
	return (sbttons(sbinuptime()));
}

/*
 * The vif's device lock (sx), the mutex of its queue of packets waiting for that lock, and
 * its taskqueue are the shared glue xen.ko exports (freebsd_kpi::sync and ::taskqueue; see
 * docs/FREEBSD.md "The driver modules"): if_transmit and the event handler never sleep, they
 * only try the device lock and leave their work for its holder.
 */

/*
 * dev.xnb.<unit>.<leaf>: the indices are `DevStat` in src/vif.rs; a unit test there checks
 * that both lists agree.
 */
static const struct xenrs_sysctl_leaf xnb_kmod_leaves[] = {
	{ "domid", "Frontend domain id" },
	{ "handle", "Frontend vif handle" },
	{ "to_guest_packets", "Frames queued for the guest" },
	{ "to_guest_dropped", "Frames for the guest dropped (queue full, link down)" },
	{ "from_guest_packets", "Frames from the guest passed up" },
	{ "from_guest_dropped", "Frames from the guest dropped (no mbuf)" },
	{ "queues", "Queues connected" },
	{ "connections", "Connections of the frontend" },
	{ "link", "Link up (1) or down (0)" },
	{ "violations", "Connections the frontend broke the protocol on (each failed the vif)" },
};

XENRS_SYSCTL_DEV(xnb, xnb_kmod_leaves,
    "Xen PV network backend vifs (xen-freebsd-rs)",
    "Xen PV network backend vif");
