//! Every netif phase of the hostile frontend against the real backend core (`xen-netback`):
//! the connect-time keys through its xenstore reader (`config::read_frontend`, over
//! `xen-tests`' in-memory store), the ring attacks through a [`Queue`] over its fuzzing
//! harness's rings (fake grants, an ungranted reference failing its copy), driven as the
//! driver domain drives it (`process_tx`, `tick`, `process_rx` per round). The slots go
//! through this crate's own raw rings and the reaction is judged with the same [`judge`] the
//! program uses on real Xen; a queue error is what makes the driver domain fail the vif.
//!
//! [`Queue`]: xen_netback::Queue

#[cfg(test)]
mod tests {
    use hostile_frontend::dev;
    use hostile_frontend::net::{
        connect_keys, judge, request_id, rx_requests, tx_requests, Expect, Grefs, Observed, Phase,
        RxRsp, TxRsp, BAD_GREF, FLOOD, FRAME_LEN, RX_BUFFERS,
    };
    use hostile_frontend::netif::{self, RSP_ERROR, RX_ENTRY, TX_ENTRY};
    use hostile_frontend::ring::RawFront;
    use hostile_frontend::rng::Rng;
    use xen_netback::config::{read_frontend, BackendFeatures};
    use xen_netback::fuzzing::{FakeGrants, Harness, Memory, Record, STAGING_BASE};
    use xen_netback::{Limits, STAGING_PAGES};
    use xen_tests::blk::memxs::MemXs;

    const FE: &str = "/local/domain/5/device/hostile-vif/0";
    const G: Grefs = Grefs { data: 10, ro: 11 };

    /// The frontend's keys for `p` in a store, read by the backend.
    fn keys(p: Phase) -> Result<xen_netback::FrontendInfo, xen_netback::ConfigError> {
        let mut xs = MemXs::new();
        for (k, v) in connect_keys(p, 8, 9, 3) {
            if let Some(v) = v {
                xs.set(&format!("{FE}/{k}"), v.as_bytes());
            }
        }
        read_frontend(&mut xs, FE, &BackendFeatures::default())
    }

    /// One round of the driver domain's loop for a vif's queue; `false` once it failed.
    fn round(h: &mut Harness<'_, '_>, io: &mut Record, now: u64) -> bool {
        h.queue.process_tx(io).is_ok() && {
            h.queue.tick(now);
            h.queue.process_rx(now).is_ok()
        }
    }

    fn take(tx: &mut RawFront<'_>, rx: &mut RawFront<'_>, o: &mut Observed) {
        o.tx.extend(tx.take_responses().unwrap().iter().map(|s| {
            let (id, status) = netif::tx_response(s);
            TxRsp { id, status }
        }));
        o.rx.extend(
            rx.take_responses()
                .unwrap()
                .iter()
                .map(|s| hostile_frontend::net::rx_response(s)),
        );
    }

    fn run(p: Phase, seed: u64) -> Observed {
        let info = match keys(p) {
            Ok(i) => i,
            // Refused at connect: the driver domain writes the reason and goes Closing.
            Err(e) => {
                return Observed {
                    state: dev::CLOSING,
                    error: Some(format!("{e:?}")),
                    ..Observed::default()
                }
            }
        };
        let q = info.queues[0];
        if q.tx_ring_ref == BAD_GREF {
            // The keys parse; mapping the ring fails (the platform's map), and connect fails.
            return Observed {
                state: dev::CLOSING,
                error: Some("ring map".into()),
                ..Observed::default()
            };
        }
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, STAGING_BASE);
        grants.fail.borrow_mut().push(BAD_GREF);
        let mut h = Harness::new(&mem, &grants, info.features, Limits::default());
        let mut tx = RawFront::init(h.tx_ring, TX_ENTRY).unwrap();
        let mut rx = RawFront::init(h.rx_ring, RX_ENTRY).unwrap();
        let bufs: Vec<u32> = (0..u32::try_from(RX_BUFFERS).unwrap())
            .map(|i| 20 + i)
            .collect();
        for s in rx_requests(p, &bufs) {
            rx.put(&s);
        }
        if p == Phase::RunawayRx {
            rx.publish_raw(rx.size() + 1000);
        } else {
            rx.publish();
        }
        for s in tx_requests(p, G, &mut Rng::new(seed)) {
            tx.put(&s);
        }
        if p == Phase::RunawayTx {
            tx.publish_raw(tx.rsp_prod() + tx.size() + 1000);
        } else {
            tx.publish();
        }
        let mut io = Record::default();
        let mut o = Observed {
            state: dev::CONNECTED,
            ..Observed::default()
        };
        let rounds = if p == Phase::EventFlood { FLOOD } else { 4 };
        let mut ok = (0..rounds).all(|i| round(&mut h, &mut io, u64::from(i)));
        if ok && matches!(p, Phase::EventFlood | Phase::RxAbuse) {
            tx.put(&netif::tx(G.data, 0, 0, request_id(p, 1), FRAME_LEN));
            tx.publish();
            if p == Phase::RxAbuse {
                // dom0's two ARP replies.
                for _ in 0..2 {
                    h.queue
                        .enqueue_rx(&[0x5a; 60], &xen_netif::PacketMeta::default())
                        .unwrap();
                }
            }
            ok = (0..4).all(|i| round(&mut h, &mut io, 10_000 + i));
        }
        take(&mut tx, &mut rx, &mut o);
        if !ok {
            o.state = dev::CLOSING;
            o.error = h.queue.failure().map(|e| format!("{e:?}"));
            assert_eq!(h.queue.rx_queued(), (0, 0), "{p:?}: held after the failure");
        }
        o
    }

    #[test]
    fn each_phase_gets_the_reaction_it_expects() {
        for p in Phase::ALL {
            for seed in [1, 0x5eed, 0xdead_beef] {
                let o = run(p, seed);
                assert!(judge(&p.expect(), &o), "{p:?} seed {seed}: {o:?}");
                if p.expect() == Expect::Fails {
                    assert!(o.error.is_some(), "{p:?}: no reason");
                }
            }
        }
    }

    #[test]
    fn rx_abuse_answers_the_bad_buffer_with_an_error_and_keeps_duplicate_ids() {
        let o = run(Phase::RxAbuse, 1);
        assert_eq!(o.state, dev::CONNECTED);
        assert_eq!(
            o.rx,
            [
                RxRsp {
                    id: 1,
                    status: RSP_ERROR
                },
                RxRsp { id: 7, status: 60 }
            ]
        );
    }

    #[test]
    fn the_failing_phases_fail_for_their_own_reason() {
        let reason = |p| run(p, 1).error.unwrap_or_default();
        assert!(reason(Phase::TooManySlots).contains("TooManySlots"));
        assert!(reason(Phase::BogusExtra).contains("BadExtraType(200)"));
        assert!(reason(Phase::ExtraChain).contains("TooManyExtras"));
        assert!(reason(Phase::RunawayTx).contains("RequestOverflow"));
        assert!(reason(Phase::RunawayRx).contains("RequestOverflow"));
        assert!(reason(Phase::MissingKeys).contains("Missing(\"tx-ring-ref\")"));
        assert!(reason(Phase::GarbageKeys).contains("Malformed(\"tx-ring-ref\")"));
        assert!(reason(Phase::QueueCount).contains("BadQueueCount(4096)"));
    }
}
