/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xn.ko: module registration and the thin FreeBSD side of the network frontend: the ifnet
 * (if_t accessors only), its transmit/ioctl entry points, mbuf copies in both directions,
 * link state and the sysctl tree dev.xn.<unit> (its locks and taskqueue are xen.ko's shared
 * glue: freebsd_kpi::sync and ::taskqueue, docs/FREEBSD.md). Every decision (which
 * queue, which offload flags, when the link is up, the gratuitous ARP) is the Rust library's
 * (src/net.rs); each function here is a few lines of KPI with fixed arity, so the host tests
 * replace them with fakes.
 */
#include "xenrs_module.h"
#include "xenrs_glue.h"

#include <sys/malloc.h>
#include <sys/mbuf.h>
#include <sys/socket.h>
#include <sys/sockio.h>
#include <sys/sysctl.h>

#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_var.h>
#include <net/if_types.h>

#include "xenrs_ifnet.h"

#include <netinet/in.h>

XENRS_DRIVER_MODULE(xn);
XENRS_IFNET_GLUE(xn);

/* Interface capabilities as the Rust side names them (src/net.rs `Caps`). */
#define	XENRS_XN_TXCSUM		0x01
#define	XENRS_XN_TXCSUM6	0x02
#define	XENRS_XN_TSO4		0x04
#define	XENRS_XN_TSO6		0x08
#define	XENRS_XN_RXCSUM		0x10
#define	XENRS_XN_RXCSUM6	0x20

/* What a packet asks of the offloads (src/net.rs `TxOffload`). */
#define	XENRS_XN_TX_PARTIAL	0x1
#define	XENRS_XN_TX_TSO4	0x2
#define	XENRS_XN_TX_TSO6	0x4

/* xenrs_xn_transmit kept the mbuf (src/sys.rs `KEPT`). */
#define	XENRS_XN_KEPT	(-1)

/* Defined by the Rust library. */
int	xenrs_xn_transmit(void *softc, struct mbuf *m, uint32_t len, uint32_t offload,
	    uint32_t segsz, uint32_t flowid, int hashed);
int	xenrs_xn_ioctl_mtu(void *softc, int mtu);
void	xenrs_xn_ioctl_caps(void *softc, uint32_t caps);

static int
xn_kmod_caps_to_ifcap(uint32_t caps)
{
	int ifcap;

	ifcap = 0;
	if ((caps & XENRS_XN_TXCSUM) != 0)
		ifcap |= IFCAP_TXCSUM;
	if ((caps & XENRS_XN_TXCSUM6) != 0)
		ifcap |= IFCAP_TXCSUM_IPV6;
	if ((caps & XENRS_XN_TSO4) != 0)
		ifcap |= IFCAP_TSO4;
	if ((caps & XENRS_XN_TSO6) != 0)
		ifcap |= IFCAP_TSO6;
	if ((caps & XENRS_XN_RXCSUM) != 0)
		ifcap |= IFCAP_RXCSUM;
	if ((caps & XENRS_XN_RXCSUM6) != 0)
		ifcap |= IFCAP_RXCSUM_IPV6;
	return (ifcap);
}

static uint32_t
xn_kmod_ifcap_to_caps(int ifcap)
{
	uint32_t caps;

	caps = 0;
	if ((ifcap & IFCAP_TXCSUM) != 0)
		caps |= XENRS_XN_TXCSUM;
	if ((ifcap & IFCAP_TXCSUM_IPV6) != 0)
		caps |= XENRS_XN_TXCSUM6;
	if ((ifcap & IFCAP_TSO4) != 0)
		caps |= XENRS_XN_TSO4;
	if ((ifcap & IFCAP_TSO6) != 0)
		caps |= XENRS_XN_TSO6;
	if ((ifcap & IFCAP_RXCSUM) != 0)
		caps |= XENRS_XN_RXCSUM;
	if ((ifcap & IFCAP_RXCSUM_IPV6) != 0)
		caps |= XENRS_XN_RXCSUM6;
	return (caps);
}

/* The checksum work the stack leaves to the interface, for the enabled capabilities. */
static void
xn_kmod_set_hwassist(if_t ifp)
{
	int cap, assist;

	cap = if_getcapenable(ifp);
	assist = 0;
	if ((cap & IFCAP_TXCSUM) != 0)
		assist |= CSUM_TCP | CSUM_UDP;
	if ((cap & IFCAP_TXCSUM_IPV6) != 0)
		assist |= CSUM_TCP_IPV6 | CSUM_UDP_IPV6;
	if ((cap & IFCAP_TSO4) != 0)
		assist |= CSUM_IP_TSO;
	if ((cap & IFCAP_TSO6) != 0)
		assist |= CSUM_IP6_TSO;
	if_sethwassist(ifp, assist);
}

static int
xn_kmod_transmit(if_t ifp, struct mbuf *m)
{
	uint32_t offload;
	int error;

	offload = 0;
	if ((m->m_pkthdr.csum_flags & (CSUM_TCP | CSUM_UDP | CSUM_TCP_IPV6 |
	    CSUM_UDP_IPV6)) != 0)
		offload |= XENRS_XN_TX_PARTIAL;
	if ((m->m_pkthdr.csum_flags & CSUM_IP_TSO) != 0)
		offload |= XENRS_XN_TX_TSO4;
	if ((m->m_pkthdr.csum_flags & CSUM_IP6_TSO) != 0)
		offload |= XENRS_XN_TX_TSO6;
	/*
	 * The Rust side either keeps the mbuf (queued for the interface's lock holder, which
	 * frees it after copying it to the ring) or refuses it, and then it is ours to free.
	 */
	error = xenrs_xn_transmit(if_getsoftc(ifp), m, m->m_pkthdr.len, offload,
	    m->m_pkthdr.tso_segsz, m->m_pkthdr.flowid,
	    M_HASHTYPE_GET(m) != M_HASHTYPE_NONE);
	if (error == XENRS_XN_KEPT)
		return (0);
	m_freem(m);
	return (error);
}

/* Packets wait in the driver only while the interface's lock is taken (src/sys.rs). */
static void
xn_kmod_qflush(if_t ifp __unused)
{
}

/* Nothing to start: the link follows the connection to the backend. */
static void
xn_kmod_init(void *arg __unused)
{
}

static int
xn_kmod_ioctl(if_t ifp, u_long cmd, caddr_t data)
{
	struct ifreq *ifr;
	int error, mask, cap;

	ifr = (struct ifreq *)data;
	switch (cmd) {
	case SIOCSIFMTU:
		error = xenrs_xn_ioctl_mtu(if_getsoftc(ifp), ifr->ifr_mtu);
		if (error == 0)
			if_setmtu(ifp, ifr->ifr_mtu);
		return (error);
	case SIOCSIFFLAGS:
		/* Up/down and promiscuous need nothing here: the backend delivers every frame. */
		return (0);
	case SIOCSIFCAP:
		mask = ifr->ifr_reqcap ^ if_getcapenable(ifp);
		cap = (if_getcapenable(ifp) ^ mask) & if_getcapabilities(ifp);
		if_setcapenable(ifp, cap);
		xn_kmod_set_hwassist(ifp);
		xenrs_xn_ioctl_caps(if_getsoftc(ifp), xn_kmod_ifcap_to_caps(cap));
		return (0);
	case SIOCADDMULTI:
	case SIOCDELMULTI:
		/* The backend delivers every multicast frame; the stack filters. */
		return (0);
	default:
		return (ether_ioctl(ifp, cmd, data));
	}
}

if_t
xenrs_xn_ifnet_create(void *softc, const char *name, int unit, const uint8_t *mac,
    uint32_t caps, uint32_t enabled, int mtu)
{
	if_t ifp;

	ifp = if_alloc(IFT_ETHER);
	if_setsoftc(ifp, softc);
	if_initname(ifp, name, unit < 0 ? IF_DUNIT_NONE : unit);
	if_setflags(ifp, IFF_BROADCAST | IFF_SIMPLEX | IFF_MULTICAST);
	if_setinitfn(ifp, xn_kmod_init);
	if_setioctlfn(ifp, xn_kmod_ioctl);
	if_settransmitfn(ifp, xn_kmod_transmit);
	if_setqflushfn(ifp, xn_kmod_qflush);
	if_setcapabilities(ifp, xn_kmod_caps_to_ifcap(caps));
	if_setcapenable(ifp, xn_kmod_caps_to_ifcap(caps & enabled));
	xn_kmod_set_hwassist(ifp);
	/* A TSO packet must fit netif's largest packet (64 KiB with the Ethernet header). */
	if_sethwtsomax(ifp, 65536 - ETHER_HDR_LEN - ETHER_VLAN_ENCAP_LEN);
	ether_ifattach(ifp, mac);
	if_setmtu(ifp, mtu);
	return (ifp);
}

/* Capabilities after a connection narrowed them to the backend's offer. */
void
xenrs_xn_ifnet_caps(if_t ifp, uint32_t caps, uint32_t enabled)
{
	if_setcapabilities(ifp, xn_kmod_caps_to_ifcap(caps));
	if_setcapenable(ifp, xn_kmod_caps_to_ifcap(caps & enabled));
	xn_kmod_set_hwassist(ifp);
}

static u_int
xn_kmod_first_ipv4(void *arg, struct ifaddr *ifa, u_int count)
{
	struct sockaddr_in *sin;

	if (count == 0) {
		sin = (struct sockaddr_in *)ifa->ifa_addr;
		memcpy(arg, &sin->sin_addr, 4);
	}
	return (1);
}

/* The interface's first IPv4 address in *out; 0 when it has none. */
int
xenrs_xn_ipv4(if_t ifp, uint8_t *out)
{
	return (if_foreach_addr_type(ifp, AF_INET, xn_kmod_first_ipv4, out) != 0);
}

/*
 * dev.xn.<unit>.<leaf>: the indices are `DevStat` in src/net.rs; a unit test there checks
 * that both lists agree.
 */
static const struct xenrs_sysctl_leaf xn_kmod_leaves[] = {
	{ "tx_packets", "Packets sent" },
	{ "tx_bytes", "Bytes sent" },
	{ "tx_dropped", "Packets dropped on transmit (ring full, malformed)" },
	{ "rx_packets", "Packets received" },
	{ "rx_bytes", "Bytes received" },
	{ "rx_dropped", "Packets dropped on receive (no mbuf, bad response)" },
	{ "rx_sw_csum", "Received checksums completed in software" },
	{ "queues", "Queues connected" },
	{ "connections", "Connections to the backend" },
	{ "link", "Link up (1) or down (0)" },
	{ "failed", "The backend broke the protocol: device failed (1)" },
};

XENRS_SYSCTL_DEV(xn, xn_kmod_leaves,
    "Xen PV network interfaces (xen-freebsd-rs)",
    "Xen PV network interface");
