//! Named regressions for the netif advisory classes of protocol-survey §3, driven through the
//! real cores with a hostile peer (`xen_netback::fuzzing`, `xen_netfront::fuzzing`), plus a
//! deterministic replay of both fuzz bodies.

#[cfg(test)]
mod tests {
    use xen_netback::ctrl::Steering;
    use xen_netback::fuzzing::{all_features, grant_byte, FakeGrants, Harness, Memory, Record};
    use xen_netback::{Limits, QueueError, RxRefused, STAGING_PAGES};
    use xen_netfront::fuzzing as nf;
    use xen_netif::raw::TxRequest;
    use xen_netif::tx::{TxFault, TxSlot};
    use xen_netif::wire::{encode_extra, extra_as_tx_slot, Extra, Gso, GsoKind};
    use xen_netif::PacketMeta;
    use xen_sys::consts::{NetRxFlags, NetTxFlags, NetifStatus};

    fn slot(id: u16, gref: u32, offset: u16, size: u16, flags: NetTxFlags) -> TxRequest {
        TxSlot {
            gref,
            offset,
            size,
            id,
            flags,
        }
        .to_raw()
    }

    /// XSA-155: each request is copied off the ring once. A frontend rewriting the slots
    /// while the backend copies (here: inside the grant-copy hypercall) changes nothing: the
    /// delivered length, the data and the response ids are those of the first read.
    #[test]
    fn xsa155_double_fetch_rewrites_during_copy_are_not_seen() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, xen_netback::fuzzing::STAGING_BASE);
        let mut h = Harness::new(&mem, &grants, all_features(), Limits::default());
        let ring = h.tx_ring;
        *grants.hook.borrow_mut() = Some(Box::new(move || {
            for i in 0..2 {
                Harness::rewrite_tx(ring, i, &slot(99, 12, 4000, 65535, NetTxFlags::MORE_DATA));
            }
        }));
        h.push_tx(&[
            slot(1, 3, 0, 3000, NetTxFlags::MORE_DATA),
            slot(2, 4, 0, 1000, NetTxFlags::empty()),
        ]);
        let mut io = Record::default();
        h.queue.process_tx(&mut io).unwrap();
        assert_eq!(io.delivered.len(), 1);
        let (len, _, head) = &io.delivered[0];
        assert_eq!(*len, 3000);
        assert_eq!(head[0], grant_byte(3, 0), "data from the gref first read");
        assert_eq!(h.tx_rsp_prod(), 2);
        assert_eq!(h.tx_rsp(0), (1, NetifStatus::Okay.value()));
        assert_eq!(h.tx_rsp(1), (2, NetifStatus::Okay.value()));
    }

    /// XSA-270: control-ring hash mapping offsets and sizes are bounded before any copy; an
    /// out-of-range or overflowing request is refused, entries naming a queue that does not
    /// exist are refused, and steering never indexes past its table.
    #[test]
    fn xsa270_ctrl_ring_mapping_bounds() {
        use xen_netback::ctrl::{status, CtrlRing, MAX_MAPPING};
        use xen_netback::LocalPage;
        use xen_shmem::{Page, SharedMem};

        let ring_page = Page::new();
        let local = [Page::new()];
        let grants = FakeGrants::new(&local, 0x2000);
        let ring = SharedMem::from_pages(std::slice::from_ref(&ring_page));
        let page = LocalPage {
            gfn: 0x2000,
            mem: SharedMem::from_pages(&local),
        };
        let mut ctrl = CtrlRing::new(&grants, 1, 9, ring, page).unwrap();
        let mut st = Steering::new(4);
        let mut prod = 0u32;
        let mut call =
            |ctrl: &mut CtrlRing<'_, &FakeGrants<'_>>, st: &mut Steering, ty: u16, d: [u32; 3]| {
                let off = 64 + (prod as usize % 256) * 16;
                let req: [u32; 4] = [(prod & 0xffff) | u32::from(ty) << 16, d[0], d[1], d[2]];
                ring.write(off, &req).unwrap();
                prod += 1;
                ring.store_release_u32(0, prod).unwrap();
                assert_eq!(ctrl.process(st).unwrap(), 1);
                let rsp: [u32; 3] = ring.read(off).unwrap();
                (rsp[1], rsp[2])
            };
        // Hashing must be selected first.
        assert_eq!(
            call(&mut ctrl, &mut st, 5, [8, 0, 0]).0,
            status::NOT_SUPPORTED
        );
        assert_eq!(call(&mut ctrl, &mut st, 7, [1, 0, 0]).0, status::SUCCESS);
        assert_eq!(
            call(&mut ctrl, &mut st, 4, [0, 0, 0]),
            (status::SUCCESS, MAX_MAPPING)
        );
        assert_eq!(
            call(&mut ctrl, &mut st, 5, [MAX_MAPPING + 1, 0, 0]).0,
            status::INVALID_PARAMETER
        );
        assert_eq!(call(&mut ctrl, &mut st, 5, [8, 0, 0]).0, status::SUCCESS);
        let before = grants.entries.get();
        // offset + len beyond the table, and offset + len overflowing u32.
        assert_eq!(
            call(&mut ctrl, &mut st, 6, [5, 4, 6]).0,
            status::INVALID_PARAMETER
        );
        assert_eq!(
            call(&mut ctrl, &mut st, 6, [5, 2, u32::MAX]).0,
            status::INVALID_PARAMETER
        );
        assert_eq!(
            call(&mut ctrl, &mut st, 6, [5, u32::MAX, 1]).0,
            status::INVALID_PARAMETER
        );
        assert_eq!(
            grants.entries.get(),
            before,
            "nothing copied for refused requests"
        );
        // A key larger than supported.
        assert_eq!(
            call(&mut ctrl, &mut st, 3, [5, 41, 0]).0,
            status::BUFFER_OVERFLOW
        );
        // A valid mapping whose entries (bytes of gref 5: 05 06 07 08 ...) name queues >= 4.
        assert_eq!(
            call(&mut ctrl, &mut st, 6, [5, 2, 0]).0,
            status::INVALID_PARAMETER
        );
        // Key and flags accepted; steering stays within the queues.
        assert_eq!(call(&mut ctrl, &mut st, 3, [1, 40, 0]).0, status::SUCCESS);
        assert_eq!(call(&mut ctrl, &mut st, 2, [0xf, 0, 0]).0, status::SUCCESS);
        assert_eq!(
            call(&mut ctrl, &mut st, 2, [0x10, 0, 0]).0,
            status::INVALID_PARAMETER
        );
        for len in [0usize, 13, 14, 60, 1514] {
            let mut pkt: Vec<u8> = (0..len).map(|i| i.to_le_bytes()[0]).collect();
            if len >= 60 {
                pkt[12] = 8;
                pkt[13] = 0;
                pkt[14] = 0x45;
                pkt[23] = 6;
                pkt[46] = 0x50;
                pkt[20] = 0;
                pkt[21] = 0;
            }
            assert!(st.select(&pkt).0 < 4);
        }
    }

    /// XSA-392: a guest that posts no RX buffers cannot make the backend hold more than the
    /// configured packets/bytes, and after the stall timeout everything queued is freed and
    /// new packets are refused until buffers appear.
    #[test]
    fn xsa392_rx_queue_bounded_and_stall_frees_memory() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, xen_netback::fuzzing::STAGING_BASE);
        let limits = Limits {
            rx_queue_packets: 8,
            rx_queue_bytes: 8 * 1514,
            stall_timeout_ns: 1_000,
            ..Limits::default()
        };
        let mut h = Harness::new(&mem, &grants, all_features(), limits);
        let pkt = vec![0u8; 1514];
        let mut refused = 0;
        for _ in 0..100 {
            if h.queue.enqueue_rx(&pkt, &PacketMeta::default()) == Err(RxRefused::Full) {
                refused += 1;
            }
        }
        assert_eq!(refused, 92);
        assert_eq!(h.queue.rx_queued(), (8, 8 * 1514));
        h.queue.process_rx(0).unwrap();
        h.queue.process_rx(5_000).unwrap();
        assert!(h.queue.is_stalled());
        assert_eq!(h.queue.rx_queued(), (0, 0), "stall freed the queue");
        assert_eq!(
            h.queue.enqueue_rx(&pkt, &PacketMeta::default()),
            Err(RxRefused::Stalled)
        );
        // Buffers appear: the stall lifts and traffic flows again.
        h.post_rx(4);
        h.queue.tick(6_000);
        assert!(!h.queue.is_stalled());
        h.queue.enqueue_rx(&pkt, &PacketMeta::default()).unwrap();
        h.queue.process_rx(7_000).unwrap();
        assert_eq!(h.rx_rsp_prod(), 1);
        assert_eq!(h.queue.stats().stalls, 1);
    }

    /// XSA-448: zero-length fragments are legal and must not become empty fragments (Linux
    /// crashed on all-zero-length ones); a packet smaller than an Ethernet header is dropped
    /// with errors; nothing panics and every slot is answered.
    #[test]
    fn xsa448_zero_length_slots() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, xen_netback::fuzzing::STAGING_BASE);
        let mut h = Harness::new(&mem, &grants, all_features(), Limits::default());
        let mut io = Record::default();
        // First slot carries everything, 17 zero-length fragments follow.
        let mut reqs = vec![slot(0, 1, 0, 100, NetTxFlags::MORE_DATA)];
        for i in 1..18 {
            let f = if i < 17 {
                NetTxFlags::MORE_DATA
            } else {
                NetTxFlags::empty()
            };
            reqs.push(slot(i, 2, 0, 0, f));
        }
        // All-zero packet: total 0.
        reqs.push(slot(20, 1, 0, 0, NetTxFlags::MORE_DATA));
        reqs.push(slot(21, 1, 0, 0, NetTxFlags::empty()));
        h.push_tx(&reqs);
        h.queue.process_tx(&mut io).unwrap();
        assert_eq!(io.delivered.len(), 1);
        assert_eq!(io.delivered[0].0, 100);
        assert_eq!(grants.entries.get(), 1, "no copy for zero-length slots");
        assert_eq!(h.tx_rsp_prod(), 20, "every slot answered");
        assert_eq!(h.tx_rsp(18), (20, NetifStatus::Error.value()));
        assert_eq!(h.tx_rsp(19), (21, NetifStatus::Error.value()));
        assert!(h.queue.failure().is_none());
    }

    /// XSA-374: a malformed packet (framing broken: 19 data slots) stops the queue cleanly;
    /// the error is sticky, the queue holds nothing, later calls do no work, and the queue can
    /// be dropped (its resources released) without touching the guest's memory again.
    #[test]
    fn xsa374_error_path_keeps_lifetimes() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, xen_netback::fuzzing::STAGING_BASE);
        let mut h = Harness::new(&mem, &grants, all_features(), Limits::default());
        h.queue
            .enqueue_rx(&[0u8; 60], &PacketMeta::default())
            .unwrap();
        let reqs: Vec<_> = (0..19)
            .map(|i| slot(i, 1, 0, 64, NetTxFlags::MORE_DATA))
            .collect();
        h.push_tx(&reqs);
        let mut io = Record::default();
        let e = h.queue.process_tx(&mut io).unwrap_err();
        assert_eq!(e, QueueError::Tx(TxFault::TooManySlots));
        assert_eq!(h.queue.rx_queued(), (0, 0));
        let copies = grants.entries.get();
        assert_eq!(h.queue.process_tx(&mut io), Err(e));
        assert_eq!(h.queue.process_rx(0), Err(e));
        assert_eq!(
            h.queue.enqueue_rx(&[0u8; 60], &PacketMeta::default()),
            Err(RxRefused::Failed)
        );
        assert_eq!(
            grants.entries.get(),
            copies,
            "no guest access after the failure"
        );
        assert!(io.delivered.is_empty());
        drop(h);
    }

    /// XSA-391: a backend flooding the frontend is bounded per poll (the budget), and a
    /// backend answering with ids we never sent is a clean device error, not a crash.
    #[test]
    fn xsa391_event_storm_bounded_and_bad_ids_fail_cleanly() {
        let mem = nf::Memory::new();
        let mut h = nf::Harness::new(&mem, nf::all_features());
        h.queue.set_budget(8);
        // 64 valid single-slot packets at once.
        let rsps: Vec<[u8; 8]> = (0..64u16)
            .map(|i| {
                nf::Harness::fill_rx_page(&mem, usize::from(i), &[0xab; 60]);
                nf::rx_rsp(i, 0, 0, 60)
            })
            .collect();
        h.rx_responses(&rsps);
        let mut got = 0;
        let w = h.queue.poll_rx(|_, _| got += 1).unwrap();
        assert_eq!((got, w.more), (8, true), "one poll does a bounded amount");
        // Spurious events with nothing new do no work.
        for _ in 0..10_000 {
            let _ = h.queue.poll_tx();
        }
        while h.queue.poll_rx(|_, _| got += 1).unwrap().more {}
        assert_eq!(got, 64);
        // A TX response for an id that is not in flight (one request is outstanding, so the
        // ring itself accepts the response).
        h.queue.send(&[0u8; 60], &PacketMeta::default()).unwrap();
        assert_eq!(h.tx_request(0).0, 0);
        h.tx_responses(&[(5, 0)]);
        assert_eq!(h.queue.poll_tx(), Err(xen_netfront::FrontError::BadTxId(5)));
        // Sticky, and no more work on either ring.
        assert!(h.queue.poll_rx(|_, _| got += 1).is_err());
        assert!(h.queue.send(&[0u8; 60], &PacketMeta::default()).is_err());
    }

    /// The 2021 hardening: an RX response whose id is not the one posted at its position, or
    /// whose offset + length passes the page, stops the frontend.
    #[test]
    fn rx_response_ids_and_ranges_are_validated() {
        let mem = nf::Memory::new();
        let mut h = nf::Harness::new(&mem, nf::all_features());
        h.rx_responses(&[nf::rx_rsp(3, 0, 0, 60)]);
        assert!(matches!(
            h.queue.poll_rx(|_, _| {}),
            Err(xen_netfront::FrontError::Rx(_))
        ));
        let mut h = nf::Harness::new(&mem, nf::all_features());
        h.rx_responses(&[nf::rx_rsp(0, 4000, NetRxFlags::empty().bits(), 200)]);
        assert!(h.queue.poll_rx(|_, _| {}).is_err());
    }

    /// GSO extras from a frontend: bad GSO is dropped with an error, unknown extra types stop
    /// the queue.
    #[test]
    fn tx_extras_are_validated() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, xen_netback::fuzzing::STAGING_BASE);
        let mut h = Harness::new(&mem, &grants, all_features(), Limits::default());
        let gso = extra_as_tx_slot(&encode_extra(
            &Extra::Gso(Gso {
                kind: GsoKind::TcpV4,
                size: 1448,
            }),
            false,
        ));
        h.push_tx(&[slot(1, 1, 0, 2000, NetTxFlags::EXTRA_INFO), gso]);
        let mut io = Record::default();
        h.queue.process_tx(&mut io).unwrap();
        assert_eq!(io.delivered.len(), 1);
        assert_eq!(io.delivered[0].1.gso.unwrap().size, 1448);
        assert_eq!(h.tx_rsp(1).1, NetifStatus::Null.value());
        let mut bad = slot(0, 0, 0, 0, NetTxFlags::empty());
        bad.gref = 7; // extra type 7
        h.push_tx(&[slot(2, 1, 0, 60, NetTxFlags::EXTRA_INFO), bad]);
        assert_eq!(
            h.queue.process_tx(&mut io),
            Err(QueueError::Tx(TxFault::BadExtraType(7)))
        );
    }

    /// XSA-361 class (grant operations failing under a hostile frontend): a TX slot whose
    /// grant copy fails drops its own packet, answered `ERROR` on every slot, and nothing
    /// else; an RX buffer whose grant copy fails is answered with an error status. The queue
    /// goes on, nothing panics.
    #[test]
    fn xsa361_grant_copy_failures_drop_only_their_packet() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, xen_netback::fuzzing::STAGING_BASE);
        grants.fail.borrow_mut().extend([3, 1000]);
        let mut h = Harness::new(&mem, &grants, all_features(), Limits::default());
        let mut io = Record::default();
        h.push_tx(&[
            // A: its only slot's copy fails.
            slot(1, 3, 0, 100, NetTxFlags::empty()),
            // B: good.
            slot(2, 4, 0, 200, NetTxFlags::empty()),
            // C: its second slot's copy fails.
            slot(3, 5, 0, 1500, NetTxFlags::MORE_DATA),
            slot(4, 3, 0, 500, NetTxFlags::empty()),
            // D: good, after the failures.
            slot(5, 6, 0, 300, NetTxFlags::empty()),
        ]);
        h.queue.process_tx(&mut io).unwrap();
        let lens: Vec<usize> = io.delivered.iter().map(|d| d.0).collect();
        assert_eq!(lens, [200, 300], "only the packets whose copies succeeded");
        assert_eq!(io.delivered[0].2[0], grant_byte(4, 0));
        let err = NetifStatus::Error.value();
        let ok = NetifStatus::Okay.value();
        let rsps: Vec<_> = (0..5).map(|i| h.tx_rsp(i)).collect();
        assert_eq!(rsps, [(1, err), (2, ok), (3, err), (4, err), (5, ok)]);
        let st = h.queue.stats();
        assert_eq!((st.tx_grant_errors, st.tx_dropped), (2, 2));
        assert!(h.queue.failure().is_none());
        // RX: the first posted buffer (gref 1000) fails, the second (1001) takes the next
        // packet.
        h.post_rx(2);
        for b in [0x11u8, 0x22] {
            h.queue
                .enqueue_rx(&[b; 60], &PacketMeta::default())
                .unwrap();
        }
        h.queue.process_rx(0).unwrap();
        assert_eq!(h.rx_rsp_prod(), 2);
        let rx = |i: usize| {
            let w1 = h.rx_ring.load_relaxed_u32(64 + i * 8 + 4).unwrap();
            i16::from_le_bytes(w1.to_le_bytes()[2..4].try_into().unwrap())
        };
        assert_eq!((rx(0), rx(1)), (err, 60));
        assert_eq!(h.queue.stats().rx_grant_errors, 1);
        assert_eq!(*grants.written.borrow(), [(1001, vec![0x22; 60])]);
        assert!(h.queue.failure().is_none());
    }

    /// XSA-332 (a frontend's event storm against the backend): each call takes at most
    /// `tx_budget` packets with one batched copy and asks to be called again; events with
    /// nothing new on the ring cost no copy, no response and no delivery.
    #[test]
    fn xsa332_event_storm_bounded_per_call() {
        let mem = Memory::new(STAGING_PAGES);
        let grants = FakeGrants::new(&mem.local, xen_netback::fuzzing::STAGING_BASE);
        let limits = Limits {
            tx_budget: 8,
            ..Limits::default()
        };
        let mut h = Harness::new(&mem, &grants, all_features(), limits);
        let reqs: Vec<_> = (0..100)
            .map(|i| slot(i, 1, 0, 60, NetTxFlags::empty()))
            .collect();
        h.push_tx(&reqs);
        let mut io = Record::default();
        let w = h.queue.process_tx(&mut io).unwrap();
        assert_eq!((w.packets, w.more), (8, true));
        assert_eq!((io.delivered.len(), grants.batches.get()), (8, 1));
        let mut calls = 1;
        loop {
            let w = h.queue.process_tx(&mut io).unwrap();
            assert!(w.packets <= 8);
            calls += 1;
            if !w.more {
                break;
            }
        }
        assert_eq!(io.delivered.len(), 100);
        assert_eq!(calls, 13, "100 packets at 8 per call");
        let (batches, rsps) = (grants.batches.get(), h.tx_rsp_prod());
        assert_eq!(rsps, 100);
        for _ in 0..10_000 {
            let w = h.queue.process_tx(&mut io).unwrap();
            assert_eq!((w.packets, w.more), (0, false));
        }
        assert_eq!(
            grants.batches.get(),
            batches,
            "spurious events copy nothing"
        );
        assert_eq!(h.tx_rsp_prod(), rsps);
        assert_eq!(io.delivered.len(), 100);
    }

    /// XSA-403: with `trusted` = 0 in the frontend's directory, a TX page granted to the
    /// backend exposes only the packet in it: the tail of an earlier, longer packet in the
    /// same page is zeroed. With a trusted backend the tail stays (the page is still
    /// dedicated to that backend), which is what shows the zeroing is there. `trusted` is
    /// read as Linux reads it: absent or unparsable means trusted, only `0` is not.
    #[test]
    fn xsa403_untrusted_backend_sees_no_stale_bytes() {
        use xen_netfront::negotiate::read_trusted;
        use xen_tests::xensim::xenstored::XenstoreSim;
        use xen_xenbus::Store;

        let xs = XenstoreSim::new();
        let mut c = xs.client(0);
        let fe = "/local/domain/1/device/vif/0";
        assert!(read_trusted(&mut c, fe).unwrap(), "absent: trusted");
        for (v, want) in [("0", false), ("1", true), ("junk", true)] {
            c.write_str(&format!("{fe}/trusted"), v).unwrap();
            assert_eq!(read_trusted(&mut c, fe).unwrap(), want, "trusted = {v}");
        }
        for untrusted in [true, false] {
            let mem = nf::Memory::new();
            let feat = xen_netfront::queue::Features {
                untrusted,
                ..nf::all_features()
            };
            let mut h = nf::Harness::new(&mem, feat);
            h.queue.send(&[0xaa; 3000], &PacketMeta::default()).unwrap();
            let (id, size, _) = h.tx_request(0);
            assert_eq!(size, 3000);
            h.tx_responses(&[(id, NetifStatus::Okay.value())]);
            assert_eq!(h.queue.poll_tx(), Ok(1));
            h.queue.send(&[0x55; 60], &PacketMeta::default()).unwrap();
            assert_eq!(h.tx_request(1).0, id, "the freed page is reused");
            let mut b = vec![0u8; 4096];
            mem.tx_page(usize::from(id))
                .unwrap()
                .copy_to_slice(0, &mut b)
                .unwrap();
            assert!(b[..60].iter().all(|&x| x == 0x55));
            let stale = b[60..].iter().filter(|&&x| x != 0).count();
            let want = if untrusted { 0 } else { 3000 - 60 };
            assert_eq!(stale, want, "untrusted = {untrusted}");
        }
    }

    fn inputs(seed: u64, n: usize) -> Vec<Vec<u8>> {
        let mut x = seed;
        (0..n)
            .map(|i| {
                let len = 16 + (i * 37) % 900;
                (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x.to_le_bytes()[0]
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn fuzz_replay_netback_tx() {
        for d in inputs(7, 300) {
            xen_netback::fuzzing::netback_tx(&d);
        }
    }

    #[test]
    fn fuzz_replay_netfront_rsp() {
        for d in inputs(11, 300) {
            xen_netfront::fuzzing::netfront_rsp(&d);
        }
    }
}
