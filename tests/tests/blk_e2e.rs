//! blkfront and blkback end to end over `xensim`: two domains, the simulated xenstored, real
//! grant tables and event channels, and a disk image file.
//!
//! The feature matrix runs every combination of indirect segments (on/off), persistent
//! grants (on/off), queues (1/2), ring order (0/2) and ring layout (x86_64/x86_32 frontend
//! against the amd64 backend), rotating the backend's data path (map/copy), the `trusted`
//! key and the store's completion order through them; each combination checks that exactly
//! it was negotiated, then runs random verified I/O.

#[cfg(test)]
mod tests {
    use xen_blkback::proto::Abi;
    use xen_blkback::{DataPath, DiscardInfo, StoreInfo};
    use xen_blkfront::{BioError, BioOp, FrontEvent};
    use xen_tests::blk::file_store::Mode;
    use xen_tests::blk::harness::{be_dir, fe_dir, Setup, World};
    use xen_tests::xensim::faults::EventChaos;

    #[test]
    fn connects_and_round_trips() {
        let mut w = World::new(&Setup::new(1));
        assert!(w.connected(), "{w:?}\n{:#?}", w.log.lines());
        let t = w.io(BioOp::Write, 8, &[(0, 7), (2, 5)]).unwrap();
        w.run_until_idle(1000);
        assert_eq!(w.result(t), Some(Ok(())), "{:#?}", w.log.lines());
        let r = w.io(BioOp::Read, 8, &[(0, 7), (0, 3)]).unwrap();
        w.run_until_idle(1000);
        assert_eq!(w.result(r), Some(Ok(())));
        assert_eq!(w.stats.verified_reads, 1);
        w.check_image();
        assert_eq!(w.node(&format!("{}/state", be_dir())).as_deref(), Some("4"));
        assert_eq!(w.node(&format!("{}/state", fe_dir())).as_deref(), Some("4"));
    }

    #[derive(Debug, Clone, Copy)]
    struct Combo {
        indirect: bool,
        persistent: bool,
        queues: u32,
        order: u32,
        abi: Abi,
        copy: bool,
        trusted: bool,
        deferred: bool,
    }

    fn combos() -> Vec<Combo> {
        let mut v = Vec::new();
        for i in 0..32u32 {
            v.push(Combo {
                indirect: i & 1 != 0,
                persistent: i & 2 != 0,
                queues: if i & 4 != 0 { 2 } else { 1 },
                order: if i & 8 != 0 { 2 } else { 0 },
                abi: if i & 16 != 0 {
                    Abi::X86_32
                } else {
                    Abi::X86_64
                },
                // Rotated through the matrix so each value meets every other dimension.
                copy: i % 3 == 1,
                trusted: i % 5 != 2,
                deferred: i % 2 == 0,
            });
        }
        v
    }

    fn run_combo(c: Combo, seed: u64) {
        let mut s = Setup::new(seed);
        s.back.max_indirect_segments = if c.indirect { 64 } else { 0 };
        s.front.max_indirect_segments = 64;
        s.back.persistent = c.persistent;
        s.front.persistent = true;
        s.back.max_queues = c.queues;
        s.front.max_queues = 4;
        s.back.max_ring_page_order = c.order;
        s.front.max_ring_page_order = 4;
        s.front.abi = c.abi;
        s.back.data_path = if c.copy {
            DataPath::Copy
        } else {
            DataPath::Map
        };
        s.back.copy_pool_pages = 128;
        s.trusted = c.trusted;
        s.mode = if c.deferred {
            Mode::Deferred
        } else {
            Mode::InOrder
        };
        let mut w = World::new(&s);
        assert!(w.connected(), "{c:?}: {w:?}\n{:#?}", w.log.lines());
        let fe = w.frontend.borrow().negotiated().unwrap();
        let be = w.backend.borrow().negotiated().unwrap();
        assert_eq!(fe.abi, c.abi, "{c:?}");
        assert_eq!(be.abi, c.abi, "{c:?}");
        assert_eq!((fe.queues, be.queues), (c.queues, c.queues), "{c:?}");
        assert_eq!(
            (fe.ring_page_order, be.ring_page_order),
            (c.order, c.order),
            "{c:?}"
        );
        assert_eq!(fe.ring_entries, be.ring_entries);
        assert_eq!(fe.ring_entries, 32 << c.order);
        // Copy mode never offers persistent grants.
        let persistent = c.persistent && !c.copy;
        assert_eq!(
            (fe.persistent, be.persistent),
            (persistent, persistent),
            "{c:?}"
        );
        assert_eq!(fe.indirect, c.indirect, "{c:?}");
        assert_eq!(fe.max_segments, if c.indirect { 64 } else { 11 }, "{c:?}");
        assert_eq!(fe.trusted, c.trusted);
        // Bios of up to 80 segments: split to 11 without indirect, to 64 with.
        w.random_io(60, 80, 10, 20);
        w.check_image();
        let fs = w.frontend.borrow().stats();
        let bs = w.backend.borrow().stats();
        assert!(fs.splits > 0, "{c:?}: {fs:?}");
        assert_eq!(fs.indirect > 0, c.indirect, "{c:?}: {fs:?}");
        assert_eq!(bs.indirect, fs.indirect, "{c:?}");
        assert_eq!(bs.persistent_hits > 0, persistent, "{c:?}: {bs:?}");
        assert_eq!(fs.bounced > 0, !c.trusted && !persistent, "{c:?}: {fs:?}");
        assert_eq!(
            bs.errors + bs.violations + bs.map_failures + bs.copy_failures,
            0,
            "{bs:?}"
        );
        if c.deferred {
            let st = w.backend.borrow().store().unwrap().stats();
            assert_eq!(st.flush_order_violations, 0, "{c:?}: {st:?}");
            assert!(st.flushes > 0);
        }
        // Nothing of the connection leaks: no frontend grant still mapped beyond the
        // persistent ones, all requests answered.
        assert_eq!(w.backend.borrow().in_flight(), 0);
        assert_eq!(w.frontend.borrow().in_flight(), 0);
        if !persistent {
            assert_eq!(
                w.back_dom.mappings(),
                c.queues as usize * (1 << c.order),
                "{c:?}"
            );
        }
    }

    fn matrix(filter: impl Fn(&Combo) -> bool) {
        for (i, c) in combos().into_iter().enumerate() {
            if filter(&c) {
                run_combo(c, 100 + i as u64);
            }
        }
    }

    // The 32 combinations, in four tests so they run in parallel.
    #[test]
    fn feature_matrix_amd64_frontend_direct() {
        matrix(|c| c.abi == Abi::X86_64 && !c.indirect);
    }

    #[test]
    fn feature_matrix_amd64_frontend_indirect() {
        matrix(|c| c.abi == Abi::X86_64 && c.indirect);
    }

    #[test]
    fn feature_matrix_i386_frontend_direct() {
        matrix(|c| c.abi == Abi::X86_32 && !c.indirect);
    }

    #[test]
    fn feature_matrix_i386_frontend_indirect() {
        matrix(|c| c.abi == Abi::X86_32 && c.indirect);
    }

    /// Completes every bio and checks it succeeded.
    fn settle(w: &mut World) {
        w.run_until_idle(2000);
        assert!(
            w.issued.is_empty(),
            "bios left: {w:?}\n{:#?}",
            w.log.lines()
        );
    }

    #[test]
    fn flush_and_barrier_order_writes() {
        let mut s = Setup::new(7);
        s.mode = Mode::Deferred;
        s.back.max_queues = 2;
        let mut w = World::new(&s);
        assert!(w.connected());
        for round in 0..6u64 {
            for k in 0..8u64 {
                w.io(BioOp::Write, round * 512 + k * 16, &[(0, 7), (0, 7)])
                    .unwrap();
            }
            // A barrier write: ordered after the writes above, durable before later ones.
            w.io(BioOp::Barrier, round * 512 + 300, &[(0, 7)]).unwrap();
            w.flush().unwrap();
            for _ in 0..3 {
                w.step();
            }
        }
        settle(&mut w);
        w.check_image();
        let st = w.backend.borrow().store().unwrap().stats();
        let bs = w.backend.borrow().stats();
        assert_eq!(st.flush_order_violations, 0, "{st:?}");
        assert_eq!((bs.flushes, bs.barriers), (6, 6), "{bs:?}");
        // Each flush and each barrier (before and after its write) flushed the store.
        assert_eq!(st.flushes, 6 + 12, "{st:?}");
        assert_eq!(w.stats.failed, 0);
    }

    #[test]
    fn discard_zeroes_and_secure_discard() {
        let mut w = World::new(&Setup::new(8));
        let d = w.frontend.borrow().disk().unwrap().discard.unwrap();
        assert_eq!((d.granularity, d.alignment, d.secure), (4096, 0, true));
        assert_eq!(
            w.node(&format!("{}/discard-granularity", be_dir()))
                .as_deref(),
            Some("4096")
        );
        w.io(BioOp::Write, 64, &[(0, 7), (0, 7), (0, 7)]).unwrap();
        settle(&mut w);
        w.discard(64, 8, false).unwrap();
        w.discard(80, 8, true).unwrap();
        settle(&mut w);
        w.io(BioOp::Read, 64, &[(0, 7), (0, 7), (0, 7)]).unwrap();
        settle(&mut w);
        assert_eq!(w.stats.failed, 0);
        assert_eq!(w.stats.verified_reads, 1);
        assert!(w.image(64, 8).iter().all(|&b| b == 0));
        assert!(w.image(72, 8).iter().any(|&b| b != 0));
        assert!(w.image(80, 8).iter().all(|&b| b == 0));
        w.check_image();
        assert_eq!(w.backend.borrow().stats().discards, 2);
    }

    #[test]
    fn discard_disabled_by_toolstack_or_without_secure() {
        let mut s = Setup::new(9);
        s.discard_enable = false;
        let mut w = World::new(&s);
        assert_eq!(w.frontend.borrow().disk().unwrap().discard, None);
        assert_eq!(
            w.node(&format!("{}/feature-discard", be_dir())).as_deref(),
            Some("0")
        );
        assert_eq!(w.discard(0, 8, false), Err(BioError::NotSupported));

        let mut s = Setup::new(10);
        s.store_info = Some(StoreInfo {
            sectors: 0,
            sector_size: 512,
            physical_sector_size: 4096,
            read_only: false,
            flush: true,
            discard: Some(DiscardInfo {
                granularity: 512,
                alignment: 0,
                secure: false,
            }),
        });
        let mut w = World::new(&s);
        let disk = w.frontend.borrow().disk().unwrap();
        assert_eq!(disk.physical_sector_size, 4096);
        assert_eq!(w.discard(0, 8, true), Err(BioError::NotSupported));
        assert!(w.discard(0, 8, false).is_ok());
        settle(&mut w);
        assert_eq!(w.stats.failed, 0);
    }

    #[test]
    fn read_only_cdrom_removable() {
        let mut s = Setup::new(11);
        s.readonly = true;
        s.cdrom = true;
        s.removable = true;
        let mut w = World::new(&s);
        assert!(w.connected());
        let d = w.frontend.borrow().disk().unwrap();
        assert!(d.readonly && d.cdrom && d.removable, "{d:?}");
        // info = CDROM | REMOVABLE | READONLY.
        assert_eq!(w.node(&format!("{}/info", be_dir())).as_deref(), Some("7"));
        assert!(!d.flush && !d.barrier && d.discard.is_none(), "{d:?}");
        assert_eq!(w.io(BioOp::Write, 0, &[(0, 7)]), Err(BioError::ReadOnly));
        assert_eq!(w.discard(0, 8, false), Err(BioError::ReadOnly));
        w.io(BioOp::Read, 0, &[(0, 7)]).unwrap();
        settle(&mut w);
        assert_eq!((w.stats.ok, w.stats.failed), (1, 0));
    }

    #[test]
    fn large_logical_sectors() {
        let mut s = Setup::new(12);
        s.store_info = Some(StoreInfo {
            sectors: 0,
            sector_size: 4096,
            physical_sector_size: 4096,
            read_only: false,
            flush: true,
            discard: None,
        });
        let mut w = World::new(&s);
        let d = w.frontend.borrow().disk().unwrap();
        assert_eq!(d.sector_size, 4096);
        assert_eq!(
            w.node(&format!("{}/sector-size", be_dir())).as_deref(),
            Some("4096")
        );
        // Misaligned start or length is refused locally.
        assert_eq!(w.io(BioOp::Write, 4, &[(0, 7)]), Err(BioError::Invalid));
        assert_eq!(w.io(BioOp::Write, 8, &[(0, 3)]), Err(BioError::Invalid));
        w.io(BioOp::Write, 8, &[(0, 7), (0, 7)]).unwrap();
        w.io(BioOp::Write, 64, &[(4, 7), (0, 3)]).unwrap();
        settle(&mut w);
        w.io(BioOp::Read, 8, &[(0, 7), (0, 7)]).unwrap();
        w.io(BioOp::Read, 64, &[(0, 7)]).unwrap();
        settle(&mut w);
        assert_eq!((w.stats.failed, w.stats.verified_reads), (0, 2));
        w.check_image();
    }

    #[test]
    fn online_resize_grow_and_shrink() {
        let mut s = Setup::new(13);
        s.sectors = 4096;
        let mut w = World::new(&s);
        assert_eq!(
            w.io(BioOp::Write, 4096, &[(0, 7)]),
            Err(BioError::OutOfRange)
        );
        w.backend
            .borrow_mut()
            .store_mut()
            .unwrap()
            .resize(8192)
            .unwrap();
        let changed = w
            .with_backend(|b, xs, dev| b.check_resize(xs, dev))
            .unwrap();
        assert_eq!(changed, Ok(true));
        w.run_until_idle(100);
        assert!(
            w.events.contains(&FrontEvent::Resized { sectors: 8192 }),
            "{:?}",
            w.events
        );
        assert_eq!(w.frontend.borrow().disk().unwrap().sectors, 8192);
        assert!(w.connected());
        w.model.resize(8192);
        w.io(BioOp::Write, 8000, &[(0, 7)]).unwrap();
        settle(&mut w);
        w.io(BioOp::Read, 8000, &[(0, 7)]).unwrap();
        settle(&mut w);
        assert_eq!((w.stats.failed, w.stats.verified_reads), (0, 1));
        // Shrink: the frontend learns it, and refuses beyond the new end.
        w.backend
            .borrow_mut()
            .store_mut()
            .unwrap()
            .resize(2048)
            .unwrap();
        w.with_backend(|b, xs, dev| b.check_resize(xs, dev))
            .unwrap()
            .unwrap();
        w.run_until_idle(100);
        assert_eq!(w.frontend.borrow().disk().unwrap().sectors, 2048);
        assert_eq!(
            w.io(BioOp::Read, 2048, &[(0, 0)]),
            Err(BioError::OutOfRange)
        );
        assert_eq!(w.stats.failed, 0);
    }

    #[test]
    fn reconnect_mid_io_loses_no_acknowledged_write() {
        for (seed, persistent, queues) in [(20, true, 2), (21, false, 1), (22, true, 1)] {
            let mut s = Setup::new(seed);
            s.mode = Mode::Deferred;
            s.back.persistent = persistent;
            s.back.max_queues = queues;
            s.back.max_indirect_segments = 32;
            s.back.budget = 3;
            let mut w = World::new(&s);
            assert!(w.connected());
            // Fill the pipeline: some requests answered, some in the store, some still on
            // the ring.
            for k in 0..24u64 {
                w.io(BioOp::Write, k * 64, &[(0, 7), (0, 7), (0, 7), (1, 6)])
                    .unwrap();
            }
            w.step();
            w.step();
            w.store_paused = true;
            w.step();
            let acked_before = w.stats.ok;
            let queued = w.backend.borrow().store().unwrap().queued();
            let taken = w.backend.borrow().stats().requests;
            assert!(acked_before > 0, "nothing acknowledged yet");
            assert!(queued > 0, "nothing in the store");
            assert!(taken < 24, "nothing left on the ring");
            // The backend goes away (administrator), with I/O in flight.
            w.with_backend(|b, xs, dev| b.close(xs, dev))
                .unwrap()
                .unwrap();
            // More writes arrive while it is away: held, not refused.
            for k in 24..30u64 {
                w.io(BioOp::Write, k * 64, &[(0, 7)]).unwrap();
            }
            for _ in 0..5 {
                w.step();
            }
            w.store_paused = false;
            settle(&mut w);
            assert!(w.connected(), "{w:?}\n{:#?}", w.log.lines());
            assert_eq!(w.stats.failed, 0, "{:#?}", w.log.lines());
            assert_eq!(w.stats.ok, 30);
            assert!(acked_before < 30);
            let fs = w.frontend.borrow().stats();
            let bs = w.backend.borrow().stats();
            assert!(fs.reissued > 0, "{fs:?}");
            assert_eq!((fs.connections, bs.connections), (2, 2));
            assert!(w.events.contains(&FrontEvent::Disconnected));
            w.check_image();
            // Reads after the reconnection see everything.
            for k in 0..30u64 {
                w.io(BioOp::Read, k * 64, &[(0, 7)]).unwrap();
            }
            settle(&mut w);
            assert_eq!(w.stats.verified_reads, 30);
            // The old connection left nothing mapped but the new rings (and persistent
            // grants), and no grant the frontend ended early.
            assert_eq!(w.frontend.borrow().env().table.stats().deferred_pending, 0);
        }
    }

    #[test]
    fn unplug_fails_outstanding_bios() {
        let mut s = Setup::new(23);
        s.mode = Mode::Deferred;
        let mut w = World::new(&s);
        for k in 0..8u64 {
            w.io(BioOp::Write, k * 8, &[(0, 7)]).unwrap();
        }
        w.step();
        {
            let mut d = w.xs.daemon();
            d.execute_as(0, &xen_xenbus::Request::Rm { path: &be_dir() })
                .unwrap();
            d.execute_as(0, &xen_xenbus::Request::Rm { path: &fe_dir() })
                .unwrap();
        }
        w.run_until_idle(500);
        assert!(w.issued.is_empty(), "{w:?}");
        assert_eq!(w.stats.ok + w.stats.failed, 8);
        assert!(w.frontend.borrow().outstanding() == 0);
    }

    #[test]
    fn duplicated_and_delayed_events() {
        let mut s = Setup::new(24);
        s.back.max_queues = 2;
        let mut w = World::new(&s);
        w.sim.set_event_chaos(EventChaos {
            drop_ppm: 0,
            duplicate_ppm: 200_000,
            delay_ppm: 300_000,
            max_delay: 3,
        });
        w.tick_clock = true;
        w.random_io(60, 24, 8, 10);
        w.check_image();
        let st = w.sim.stats();
        assert!(st.events_duplicated > 0 && st.events_delayed > 0, "{st:?}");
    }
}
