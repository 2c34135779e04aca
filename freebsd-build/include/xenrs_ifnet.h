/*-
 * SPDX-License-Identifier: BSD-2-Clause
 *
 * xen-freebsd-rs: the mbuf and ifnet helpers the network modules (xn.ko, xnb.ko) share,
 * compiled into each shim under the module's prefix: XENRS_IFNET_GLUE(xn) defines
 * xenrs_xn_m_freem, xenrs_xn_ifnet_destroy, xenrs_xn_link, xenrs_xn_m_copydata,
 * xenrs_xn_mbuf and xenrs_xn_input, which the module's Rust declares through the
 * ifnet_glue! macro (modules/ifnet_glue.rs, included by its src/sys.rs) and its host tests
 * fake (modules/fake_ifnet.rs). Per-module names rather than exports of xen.ko: they are network KPI,
 * which xen.ko does not otherwise touch, and distinct names keep both modules linkable into
 * one custom kernel. See docs/FREEBSD.md, "The driver modules".
 *
 * Include after <sys/mbuf.h>, <net/if.h>, <net/if_var.h> and <net/ethernet.h>.
 */
#ifndef _XENRS_IFNET_H_
#define _XENRS_IFNET_H_

#define	XENRS_IFNET_GLUE(mod)						\
	void	xenrs_##mod##_m_freem(struct mbuf *);			\
	void	xenrs_##mod##_ifnet_destroy(if_t);			\
	void	xenrs_##mod##_link(if_t, int);				\
	void	xenrs_##mod##_m_copydata(struct mbuf *, uint32_t, uint32_t,	\
		    uint8_t *);						\
	struct mbuf *xenrs_##mod##_mbuf(if_t, const uint8_t *, uint32_t, int); \
	void	xenrs_##mod##_input(if_t, struct mbuf *);		\
									\
	/* A packet the Rust side kept, after copying it (or dropping it). */ \
	void								\
	xenrs_##mod##_m_freem(struct mbuf *m)				\
	{								\
		m_freem(m);						\
	}								\
									\
	void								\
	xenrs_##mod##_ifnet_destroy(if_t ifp)				\
	{								\
		ether_ifdetach(ifp);					\
		if_free(ifp);						\
	}								\
									\
	void								\
	xenrs_##mod##_link(if_t ifp, int up)				\
	{								\
		if (up)							\
			if_setdrvflagbits(ifp, IFF_DRV_RUNNING,		\
			    IFF_DRV_OACTIVE);				\
		if_link_state_change(ifp,				\
		    up ? LINK_STATE_UP : LINK_STATE_DOWN);		\
	}								\
									\
	void								\
	xenrs_##mod##_m_copydata(struct mbuf *m, uint32_t off, uint32_t len, \
	    uint8_t *buf)						\
	{								\
		m_copydata(m, off, len, (caddr_t)buf);			\
	}								\
									\
	/* A received frame; csum_valid: its TCP/UDP checksum is known good. */ \
	struct mbuf *							\
	xenrs_##mod##_mbuf(if_t ifp, const uint8_t *data, uint32_t len,	\
	    int csum_valid)						\
	{								\
		struct mbuf *m;						\
									\
		m = m_getcl(M_NOWAIT, MT_DATA, M_PKTHDR);		\
		if (m == NULL)						\
			return (NULL);					\
		if (m_append(m, len, (c_caddr_t)data) == 0) {		\
			m_freem(m);					\
			return (NULL);					\
		}							\
		m->m_pkthdr.rcvif = ifp;				\
		if (csum_valid) {					\
			m->m_pkthdr.csum_flags = CSUM_DATA_VALID |	\
			    CSUM_PSEUDO_HDR;				\
			m->m_pkthdr.csum_data = 0xffff;			\
		}							\
		return (m);						\
	}								\
									\
	void								\
	xenrs_##mod##_input(if_t ifp, struct mbuf *m)			\
	{								\
		if_input(ifp, m);					\
	}								\
	struct __hack

#endif /* !_XENRS_IFNET_H_ */
