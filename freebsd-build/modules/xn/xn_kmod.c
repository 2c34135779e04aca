/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xn.ko: module registration and the thin FreeBSD side of the network frontend: the ifnet
 * (if_t accessors only), its transmit/ioctl entry points, mbuf copies in both directions,
 * link state, a mutex per interface and the sysctl tree dev.xn.<unit>. Every decision (which
 * queue, which offload flags, when the link is up, the gratuitous ARP) is the Rust library's
 * (src/net.rs); each function here is a few lines of KPI with fixed arity, so the host tests
 * replace them with fakes.
 */
#include "xenrs_module.h"

#include <sys/lock.h>
#include <sys/malloc.h>
#include <sys/mbuf.h>
#include <sys/mutex.h>
#include <sys/socket.h>
#include <sys/sockio.h>
#include <sys/sysctl.h>
#include <sys/taskqueue.h>
#include <sys/sx.h>

#include <net/ethernet.h>
#include <net/if.h>
#include <net/if_var.h>
#include <net/if_types.h>

#include <netinet/in.h>

XENRS_DRIVER_MODULE(xn);

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
int	xenrs_xn_dev_stat(void *softc, int which, uint64_t *out);

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

/* Frees a packet the Rust side kept (after copying it to the ring, or dropping it). */
void
xenrs_xn_m_freem(struct mbuf *m)
{
	m_freem(m);
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

void
xenrs_xn_ifnet_destroy(if_t ifp)
{
	ether_ifdetach(ifp);
	if_free(ifp);
}

void
xenrs_xn_link(if_t ifp, int up)
{
	if (up)
		if_setdrvflagbits(ifp, IFF_DRV_RUNNING, IFF_DRV_OACTIVE);
	if_link_state_change(ifp, up ? LINK_STATE_UP : LINK_STATE_DOWN);
}

void
xenrs_xn_m_copydata(struct mbuf *m, uint32_t off, uint32_t len, uint8_t *buf)
{
	m_copydata(m, off, len, (caddr_t)buf);
}

/* A received frame as an mbuf chain; csum_valid: the TCP/UDP checksum is known good. */
struct mbuf *
xenrs_xn_mbuf(if_t ifp, const uint8_t *data, uint32_t len, int csum_valid)
{
	struct mbuf *m;

	m = m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR);
	if (m == NULL)
		return (NULL);
	if (m_append(m, len, (c_caddr_t)data) == 0) {
		m_freem(m);
		return (NULL);
	}
	m->m_pkthdr.rcvif = ifp;
	if (csum_valid) {
		m->m_pkthdr.csum_flags = CSUM_DATA_VALID | CSUM_PSEUDO_HDR;
		m->m_pkthdr.csum_data = 0xffff;
	}
	return (m);
}

void
xenrs_xn_input(if_t ifp, struct mbuf *m)
{
	if_input(ifp, m);
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
 * The device's own taskqueue thread: event work (responses, received frames) runs here, not
 * in xen.ko's event thread, whose handler only sets a flag and enqueues the task. The task
 * may sleep, so it waits for the device lock like a xenbus callback.
 */
void	xenrs_xn_task(void *softc);

struct xenrs_xn_tq {
	struct taskqueue	*tq;
	struct task		 task;
};

static void
xn_kmod_task(void *arg, int pending __unused)
{
	xenrs_xn_task(arg);
}

struct xenrs_xn_tq *
xenrs_xn_tq_new(void *softc, u_int unit)
{
	struct xenrs_xn_tq *t;

	t = malloc(sizeof(*t), M_DEVBUF, M_WAITOK | M_ZERO);
	TASK_INIT(&t->task, 0, xn_kmod_task, softc);
	t->tq = taskqueue_create("xn", M_WAITOK, taskqueue_thread_enqueue,
	    &t->tq);
	taskqueue_start_threads(&t->tq, 1, PWAIT, "xn%u taskq", unit);
	return (t);
}

void
xenrs_xn_tq_enqueue(struct xenrs_xn_tq *t)
{
	taskqueue_enqueue(t->tq, &t->task);
}

/* Waits for a run in progress, then frees the thread and the queue. */
void
xenrs_xn_tq_free(struct xenrs_xn_tq *t)
{
	taskqueue_drain(t->tq, &t->task);
	taskqueue_free(t->tq);
	free(t, M_DEVBUF);
}

/*
 * Two locks per interface. The device lock is an sx(9) lock: the xenbus callbacks hold it
 * while they talk to xenstore, allocate pages and unbind event channels, all of which may
 * sleep. if_transmit and the event handler never sleep: they only try it, and a packet that
 * finds it taken waits in a short queue guarded by the MTX_DEF mutex below (held only for a
 * push or a pop) for the holder, which drains it before it is done.
 */
struct sx *
xenrs_xn_sx_new(void)
{
	struct sx *sx;

	sx = malloc(sizeof(*sx), M_DEVBUF, M_NOWAIT | M_ZERO);
	if (sx != NULL)
		sx_init(sx, "xn");
	return (sx);
}

void
xenrs_xn_sx_xlock(struct sx *sx)
{
	sx_xlock(sx);
}

/* 1 when taken, 0 when another thread holds it. */
int
xenrs_xn_sx_try_xlock(struct sx *sx)
{
	return (sx_try_xlock(sx));
}

void
xenrs_xn_sx_xunlock(struct sx *sx)
{
	sx_xunlock(sx);
}

void
xenrs_xn_sx_free(struct sx *sx)
{
	sx_destroy(sx);
	free(sx, M_DEVBUF);
}

/* The queue of packets waiting for the device lock. */
struct mtx *
xenrs_xn_lock_new(void)
{
	struct mtx *m;

	m = malloc(sizeof(*m), M_DEVBUF, M_NOWAIT | M_ZERO);
	if (m != NULL)
		mtx_init(m, "xn txq", NULL, MTX_DEF);
	return (m);
}

void
xenrs_xn_lock(struct mtx *m)
{
	mtx_lock(m);
}

void
xenrs_xn_unlock(struct mtx *m)
{
	mtx_unlock(m);
}

void
xenrs_xn_lock_free(struct mtx *m)
{
	mtx_destroy(m);
	free(m, M_DEVBUF);
}

/*
 * dev.xn.<unit>.<leaf>: the indices are `DevStat` in src/net.rs; a unit test there checks
 * that both lists agree.
 */
static const struct {
	const char *name;
	const char *descr;
} xn_kmod_leaves[] = {
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
};

static SYSCTL_NODE(_dev, OID_AUTO, xn, CTLFLAG_RD | CTLFLAG_MPSAFE, 0,
    "Xen PV network interfaces (xen-freebsd-rs)");

static int
xn_kmod_sysctl(SYSCTL_HANDLER_ARGS)
{
	uint64_t value;
	int error;

	value = 0;
	error = xenrs_xn_dev_stat(arg1, (int)arg2, &value);
	if (error != 0)
		return (error);
	return (sysctl_handle_64(oidp, &value, 0, req));
}

struct sysctl_ctx_list *
xenrs_xn_sysctl_attach(void *softc, u_int unit)
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
	node = SYSCTL_ADD_NODE(ctx, SYSCTL_STATIC_CHILDREN(_dev_xn), OID_AUTO,
	    name, CTLFLAG_RD | CTLFLAG_MPSAFE, NULL, "Xen PV network interface");
	if (node == NULL) {
		sysctl_ctx_free(ctx);
		free(ctx, M_DEVBUF);
		return (NULL);
	}
	for (i = 0; i < nitems(xn_kmod_leaves); i++)
		SYSCTL_ADD_PROC(ctx, SYSCTL_CHILDREN(node), OID_AUTO,
		    xn_kmod_leaves[i].name,
		    CTLTYPE_U64 | CTLFLAG_RD | CTLFLAG_MPSAFE, softc, i,
		    xn_kmod_sysctl, "QU", xn_kmod_leaves[i].descr);
	return (ctx);
}

void
xenrs_xn_sysctl_detach(struct sysctl_ctx_list *ctx)
{
	sysctl_ctx_free(ctx);
	free(ctx, M_DEVBUF);
}
