//! Hostile peers: named regression tests, one per class of `protocol-survey.md` §3 that
//! concerns blkif, against each driver with a raw, test-controlled peer (the mock benches),
//! plus grant faults injected into the faithful simulator.
//!
//! | class | backend (hostile frontend) | frontend (hostile backend) |
//! |---|---|---|
//! | XSA-155 double fetch | `xsa155_request_slot_rewritten_while_parsed` | `xsa155_response_slot_rewritten_after_copy` |
//! | ring.h index overflow | `ring_request_prod_overflow_stops_device` | `ring_response_prod_overflow_stops_device` |
//! | CVE-2007-5498 segment counts | `cve_2007_5498_huge_segment_counts` | — |
//! | blkif field checks | `bad_segments_and_sector_ranges` | `unknown_duplicate_wrong_op_bad_status` |
//! | XSA-216 padding leaks | `xsa216_responses_are_zero_padded` | — |
//! | XSA-361 grant-map failures | `xsa361_grant_map_failures_partial_and_total`, `xsa361_in_xensim` | — |
//! | XSA-332 / XSA-391 event storm | `xsa332_bounded_work_per_event` | `xsa391_backend_event_storm_does_no_work` |
//! | XSA-396 grant still mapped | — | `xsa396_*` |
//! | XSA-403 untrusted backend | — | `xsa403_untrusted_backend_sees_only_the_data` |

#[cfg(test)]
#[expect(
    clippy::cast_possible_truncation,
    reason = "host-only test: small page and round numbers"
)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use xen_blkback::proto::{Abi, WireBody, WireRequest, WireResponse, WireSegment};
    use xen_blkback::{BackendConfig, DataPath, Failure, MemStore, StoreInfo};
    use xen_blkfront::{Bio, BioError, BioOp, BufSeg, FrontFailure, FrontendConfig};
    use xen_ring::Fault;
    use xen_sys::consts::{BlkifOp, BlkifStatus};
    use xen_tests::blk::bench::{
        gref_of, BackBench, FrontBench, RawBackConfig, RawFrontConfig, BE_DIR, DATA_BASE, FE_DIR,
    };
    use xen_tests::blk::mock::{grant_entry, set_mapped, BAD_GNTREF};
    use xen_xenbus::XenbusState;

    fn seg(page: usize, f: u8, l: u8) -> WireSegment {
        WireSegment {
            gref: gref_of(page),
            first_sect: f,
            last_sect: l,
        }
    }

    fn cfg() -> BackendConfig {
        BackendConfig {
            max_indirect_segments: 64,
            persistent: false,
            ..BackendConfig::default()
        }
    }

    fn bench(cfg: BackendConfig) -> BackBench {
        let mut b = BackBench::new(cfg, 4096, false);
        assert!(b.connect(RawFrontConfig::default()), "{b:?}");
        b
    }

    fn failed(b: &BackBench) -> Option<Failure> {
        b.be.borrow().failure().cloned()
    }

    // ------------------------------------------------------------------ hostile frontends

    /// XSA-155: the frontend rewrites request slots (operation, segment count, grants,
    /// sectors) from another thread while the backend takes them. Whatever the backend acts
    /// on is its one copy: no request ever maps more than 11 grants, every response is well
    /// formed, and nothing stays mapped.
    #[test]
    fn xsa155_request_slot_rewritten_while_parsed() {
        for iter in 0..12u32 {
            let mut b = bench(cfg());
            let ring = b.ring_mem(0);
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut x = 0x9e37_79b9u32.wrapping_mul(iter + 1);
                    // Bounded, so a failed assertion below cannot leave the scope waiting.
                    for _ in 0..20_000_000u32 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let slot = (x as usize >> 8) % 32;
                        let off = 64 + slot * 112;
                        // op READ/WRITE, nr_segments 1 or 200; a grant; first/last sects.
                        let nr = if x & 1 == 0 { 1 } else { 200 };
                        let _ = ring.store_relaxed_u32(off, (x >> 31) | (nr << 8));
                        let _ =
                            ring.store_relaxed_u32(off + 24, gref_of(DATA_BASE + (x as usize % 8)));
                        let _ = ring.store_relaxed_u32(off + 28, (x >> 4) & 0x0f0f);
                    }
                });
                for round in 0..64u64 {
                    let w = WireRequest::rw(
                        BlkifOp::Read,
                        round,
                        768,
                        round * 8,
                        &[seg(DATA_BASE + (round as usize % 8), 0, 7)],
                    );
                    if !b.push(0, &w) {
                        break;
                    }
                    b.poll();
                    for r in b.responses(0) {
                        assert!(r.status == 0 || r.status == -1, "{r:?}");
                        assert!(r.operation <= 1, "{r:?}");
                    }
                    assert!(
                        b.hv.state().stats.max_map_batch <= 11,
                        "a request mapped more than 11 grants"
                    );
                    // Non-persistent: between polls only the ring is mapped (and nothing
                    // once a violation made the backend drop the connection).
                    let ring_maps = usize::from(b.be.borrow().is_connected());
                    assert_eq!(b.hv.live_maps(), ring_maps);
                    if failed(&b).is_some() {
                        break;
                    }
                }
                stop.store(true, Ordering::Relaxed);
            });
            if let Some(f) = failed(&b) {
                assert!(
                    matches!(f, Failure::Violation { .. } | Failure::Ring { .. }),
                    "{f:?}"
                );
            }
            b.close();
            assert_eq!(b.leftovers(), (0, 0), "{:#?}", b.log.lines());
        }
    }

    /// ring.h `RING_REQUEST_PROD_OVERFLOW`: a `req_prod` more than a ring ahead (or moving
    /// back) stops the device: nothing is consumed, the reason is logged and written to the
    /// backend's `error` node, and the backend closes. No panic.
    #[test]
    fn ring_request_prod_overflow_stops_device() {
        let mut b = bench(cfg());
        b.ring_mem(0).store_release_u32(0, 33).unwrap();
        b.poll();
        let f = failed(&b).expect("failure");
        assert!(
            matches!(
                f,
                Failure::Ring {
                    fault: Fault::RequestOverflow { req_prod: 33, .. },
                    ..
                }
            ),
            "{f:?}"
        );
        assert_eq!(b.be.borrow().stats().requests, 0);
        assert_eq!(b.state(), XenbusState::Closing);
        let err = b.xs.get_str(&format!("{BE_DIR}/error")).unwrap();
        assert!(err.contains("overruns ring"), "{err}");
        assert!(
            b.log.contains("req_prod 0x21 overruns ring"),
            "{:#?}",
            b.log.lines()
        );
        b.close();
        assert_eq!(b.leftovers(), (0, 0));

        // Moving backwards after a valid request.
        let mut b = bench(cfg());
        assert!(b.push(
            0,
            &WireRequest::rw(BlkifOp::Read, 1, 0, 0, &[seg(DATA_BASE, 0, 0)])
        ));
        b.poll();
        assert_eq!(b.responses(0).len(), 1);
        b.ring_mem(0).store_release_u32(0, 0).unwrap();
        b.poll();
        assert!(
            matches!(failed(&b), Some(Failure::Ring { .. })),
            "{:?}",
            failed(&b)
        );
    }

    /// CVE-2007-5498: huge segment counts, direct (255 of 11) and indirect (beyond what was
    /// advertised, or zero, or unadvertised): a violation, the device stops, and not one
    /// data grant is mapped.
    #[test]
    fn cve_2007_5498_huge_segment_counts() {
        let mut direct = WireRequest::rw(BlkifOp::Write, 7, 0, 0, &[seg(DATA_BASE, 0, 7)]);
        if let WireBody::Rw { nr_segments, .. } = &mut direct.body {
            *nr_segments = 255;
        }
        let cases: [(BackendConfig, WireRequest); 4] = [
            (cfg(), direct),
            (
                cfg(),
                WireRequest::indirect(BlkifOp::Read, 7, 0, 0, 4096, &[1, 2, 3, 4, 5, 6, 7, 8]),
            ),
            (
                cfg(),
                WireRequest::indirect(BlkifOp::Read, 7, 0, 0, 0, &[1]),
            ),
            (
                BackendConfig {
                    max_indirect_segments: 0,
                    ..cfg()
                },
                WireRequest::indirect(BlkifOp::Read, 7, 0, 0, 3, &[1]),
            ),
        ];
        for (c, w) in cases {
            let mut b = bench(c);
            assert!(b.push(0, &w));
            b.poll();
            let f = failed(&b).expect("violation");
            assert!(matches!(f, Failure::Violation { id: 7, .. }), "{f:?}");
            // Only the ring was ever mapped.
            assert_eq!(b.hv.state().stats.maps, 1);
            let r = b.responses(0);
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].status, BlkifStatus::Error.value());
            // A later request is not served.
            b.push(
                0,
                &WireRequest::rw(BlkifOp::Read, 8, 0, 0, &[seg(DATA_BASE, 0, 0)]),
            );
            b.poll();
            assert!(b.responses(0).is_empty());
            b.close();
            assert_eq!(b.leftovers(), (0, 0));
        }
    }

    /// blkif field checks: `first_sect > last_sect`, `last_sect > 7`, sector overflow and an
    /// unknown (reserved) operation are protocol violations; a range beyond the end is only
    /// an error response (a correct frontend can race a shrink) and the device carries on.
    #[test]
    fn bad_segments_and_sector_ranges() {
        let mut reserved = WireRequest::rw(BlkifOp::Read, 1, 0, 0, &[seg(DATA_BASE, 0, 0)]);
        reserved.operation = 4;
        let fatal = [
            WireRequest::rw(BlkifOp::Read, 1, 0, 0, &[seg(DATA_BASE, 3, 2)]),
            WireRequest::rw(BlkifOp::Read, 1, 0, 0, &[seg(DATA_BASE, 0, 8)]),
            WireRequest::rw(BlkifOp::Write, 1, 0, u64::MAX - 2, &[seg(DATA_BASE, 0, 7)]),
            WireRequest::discard(1, 0, 8, u64::MAX, false),
            reserved,
        ];
        for w in fatal {
            let mut b = bench(cfg());
            b.push(0, &w);
            b.poll();
            assert!(
                matches!(failed(&b), Some(Failure::Violation { .. })),
                "{w:?}: {:?}",
                failed(&b)
            );
            b.close();
            assert_eq!(b.leftovers(), (0, 0));
        }
        let mut b = bench(cfg());
        b.push(
            0,
            &WireRequest::rw(BlkifOp::Read, 1, 0, 4095, &[seg(DATA_BASE, 0, 7)]),
        );
        b.push(0, &WireRequest::discard(2, 0, 4000, 200, false));
        b.push(
            0,
            &WireRequest::rw(BlkifOp::Read, 3, 0, 4088, &[seg(DATA_BASE, 0, 7)]),
        );
        b.poll();
        let r = b.responses(0);
        assert_eq!(
            r.iter().map(|r| (r.id, r.status)).collect::<Vec<_>>(),
            vec![(1, -1), (2, -1), (3, 0)]
        );
        assert!(failed(&b).is_none());
    }

    /// XSA-216: a response slot carries the id, operation and status and zeroes elsewhere,
    /// in both layouts, even where the request in that slot had data and neighbouring slots
    /// hold garbage.
    #[test]
    fn xsa216_responses_are_zero_padded() {
        for abi in [Abi::X86_64, Abi::X86_32] {
            let mut b = BackBench::new(cfg(), 4096, false);
            assert!(b.connect(RawFrontConfig {
                abi,
                ..RawFrontConfig::default()
            }));
            let entry = abi.entry_size();
            let ring = b.ring_mem(0);
            // Garbage in slots 1.. (never written by us).
            ring.fill(64 + entry, 31 * entry, 0xaa).unwrap();
            let segs: Vec<WireSegment> = (0..11).map(|i| seg(DATA_BASE + i, 1, 6)).collect();
            assert!(b.push(
                0,
                &WireRequest::rw(BlkifOp::Write, 0x0102_0304_0506_0708, 0xffff, 8, &segs)
            ));
            b.poll();
            let mut slot = vec![0u8; entry];
            ring.copy_to_slice(64, &mut slot).unwrap();
            let rsp_len = if abi == Abi::X86_64 { 16 } else { 12 };
            assert_eq!(&slot[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
            assert_eq!(slot[8], 1);
            assert_eq!(slot[9], 0, "padding after operation");
            assert_eq!(&slot[10..12], &0i16.to_le_bytes());
            assert!(
                slot[12..].iter().all(|&x| x == 0),
                "{abi}: {:?}",
                &slot[12..rsp_len + 8]
            );
            let mut next = vec![0u8; entry];
            ring.copy_to_slice(64 + entry, &mut next).unwrap();
            assert!(
                next.iter().all(|&x| x == 0xaa),
                "a neighbouring slot was touched"
            );
        }
    }

    /// XSA-361/362/365/367: grant-map failures, partial (one entry of a batch), total, and a
    /// batch aborted part-way by the hypercall, never panic: the request gets
    /// `BLKIF_RSP_ERROR`, exactly the mapped entries are unmapped, the slots come back, and
    /// the device keeps serving. An unmap failure leaves the slot reserved forever (counted),
    /// never reused.
    #[test]
    fn xsa361_grant_map_failures_partial_and_total() {
        let segs: Vec<WireSegment> = (0..5).map(|i| seg(DATA_BASE + i, 0, 7)).collect();
        let w = |id| WireRequest::rw(BlkifOp::Read, id, 0, 0, &segs);
        let mut b = bench(cfg());
        // Partial.
        b.hv.state().map_script.extend([0, 0, BAD_GNTREF, 0, 0]);
        b.push(0, &w(1));
        b.poll();
        // Total.
        b.hv.state().map_script.extend([BAD_GNTREF; 5]);
        b.push(0, &w(2));
        b.poll();
        // Aborted batch: two entries done, then EFAULT.
        b.hv.state().abort_map_after = Some(2);
        b.push(0, &w(3));
        b.poll();
        // A grant the frontend never made.
        b.push(
            0,
            &WireRequest::rw(
                BlkifOp::Read,
                4,
                0,
                0,
                &[WireSegment {
                    gref: 5,
                    first_sect: 0,
                    last_sect: 0,
                }],
            ),
        );
        b.poll();
        // Then a good one.
        b.push(0, &w(5));
        b.poll();
        let r: Vec<(u64, i16)> = b.responses(0).iter().map(|r| (r.id, r.status)).collect();
        assert_eq!(r, vec![(1, -1), (2, -1), (3, -1), (4, -1), (5, 0)]);
        assert!(failed(&b).is_none());
        assert_eq!(
            b.leftovers(),
            (1, 1),
            "only the ring stays mapped and reserved"
        );
        let st = b.be.borrow().stats();
        assert!(st.map_failures > 3 + 5, "{st:?}");
        // Unmap failure: the mapping stays, its slots stay reserved, counted.
        b.hv.state().unmap_script.push_back(-1);
        b.push(
            0,
            &WireRequest::rw(BlkifOp::Read, 6, 0, 0, &[seg(DATA_BASE, 0, 0)]),
        );
        b.poll();
        assert_eq!(b.responses(0)[0].status, 0);
        assert_eq!(b.be.borrow().stats().stuck, 1);
        assert_eq!(b.leftovers(), (2, 2));
        b.close();
        assert_eq!(
            b.leftovers(),
            (1, 1),
            "the stuck mapping's slot is never released"
        );
    }

    /// XSA-361 on an indirect page (found by the `blkback_ring` fuzzer): the indirect page's
    /// grant fails to map; the slots reserved for it are released, not leaked.
    #[test]
    fn xsa361_indirect_page_map_failure_leaks_nothing() {
        for script in [vec![BAD_GNTREF], vec![0, BAD_GNTREF]] {
            let mut b = bench(BackendConfig {
                max_indirect_segments: 1024,
                ..cfg()
            });
            let pages = script.len();
            b.hv.state().map_script.extend(script);
            let grefs: Vec<u32> = (0..pages).map(|i| gref_of(DATA_BASE + i)).collect();
            let nr = 512 * (pages as u16 - 1) + 1;
            b.push(
                0,
                &WireRequest::indirect(BlkifOp::Read, 1, 0, 0, nr, &grefs),
            );
            b.poll();
            assert_eq!(b.responses(0)[0].status, -1);
            assert!(failed(&b).is_none());
            assert_eq!(
                b.leftovers(),
                (1, 1),
                "only the ring is mapped and reserved"
            );
            b.close();
            assert_eq!(b.leftovers(), (0, 0));
        }
    }

    /// XSA-361 in the faithful simulator: the hypervisor fails some of the backend's grant
    /// maps; the affected bios fail with an I/O error, the others succeed, nothing panics,
    /// and the device keeps going.
    #[test]
    fn xsa361_in_xensim() {
        use xen_tests::blk::harness::{Setup, World};
        use xen_tests::xensim::faults::{GrantFault, GrantOp};
        let mut s = Setup::new(42);
        s.back.persistent = false;
        let mut w = World::new(&s);
        assert!(w.connected());
        w.sim.inject_grant_fault(GrantFault {
            op: GrantOp::Map,
            caller: Some(0),
            gref: None,
            skip: 3,
            times: 4,
            status: -12,
        });
        let mut tags = Vec::new();
        for k in 0..10u64 {
            tags.push(w.io(BioOp::Write, k * 32, &[(0, 7), (0, 7)]).unwrap());
        }
        w.run_until_idle(1000);
        assert!(w.issued.is_empty());
        assert!(w.stats.failed >= 1 && w.stats.ok >= 1, "{:?}", w.stats);
        assert!(w
            .results
            .iter()
            .all(|(_, r)| matches!(r, Ok(()) | Err(BioError::Io))));
        assert_eq!(
            w.back_dom.mappings(),
            4 * 16,
            "only the four queues' rings stay mapped"
        );
        w.stats = xen_tests::blk::harness::RunStats::default();
        w.random_io(20, 8, 4, 0);
        w.check_image();
    }

    /// The mode node (`r`) is enforced against a frontend that writes anyway.
    #[test]
    fn read_only_enforced_against_hostile_frontend() {
        let mut b = BackBench::new(cfg(), 4096, true);
        assert!(b.connect(RawFrontConfig::default()));
        b.data_page(DATA_BASE).fill(0, 4096, 0x77).unwrap();
        b.push(
            0,
            &WireRequest::rw(BlkifOp::Write, 1, 0, 0, &[seg(DATA_BASE, 0, 7)]),
        );
        b.push(
            0,
            &WireRequest::rw(BlkifOp::WriteBarrier, 2, 0, 0, &[seg(DATA_BASE, 0, 7)]),
        );
        b.push(0, &WireRequest::discard(3, 0, 0, 8, false));
        b.push(0, &WireRequest::rw(BlkifOp::FlushDiskcache, 4, 0, 0, &[]));
        b.push(
            0,
            &WireRequest::rw(BlkifOp::Read, 5, 0, 0, &[seg(DATA_BASE, 0, 7)]),
        );
        b.poll();
        let r: Vec<(u64, i16)> = b.responses(0).iter().map(|r| (r.id, r.status)).collect();
        assert_eq!(r, vec![(1, -1), (2, -1), (3, -1), (4, 0), (5, 0)]);
        assert!(b
            .be
            .borrow()
            .store()
            .unwrap()
            .data()
            .iter()
            .all(|&x| x == 0));
        assert_eq!(
            b.xs.get_str(&format!("{BE_DIR}/info")).as_deref(),
            Some("4")
        );
    }

    /// Operations the backend did not offer get `BLKIF_RSP_EOPNOTSUPP`, not service.
    #[test]
    fn unoffered_operations_are_refused() {
        let mut store = MemStore::new(4096);
        store.set_info(StoreInfo {
            sectors: 0,
            sector_size: 512,
            physical_sector_size: 512,
            read_only: false,
            flush: true,
            discard: None,
        });
        let mut b = BackBench::with_store(cfg(), store, false);
        assert!(b.connect(RawFrontConfig::default()));
        assert_eq!(
            b.xs.get_str(&format!("{BE_DIR}/feature-discard"))
                .as_deref(),
            Some("0")
        );
        b.push(0, &WireRequest::discard(1, 0, 0, 8, false));
        b.poll();
        assert_eq!(b.responses(0)[0].status, BlkifStatus::Eopnotsupp.value());
        assert!(failed(&b).is_none());
    }

    /// Persistent grants are bounded: a frontend using a new grant every time makes the
    /// backend evict (LRU), never map without limit; everything is unmapped at the end.
    #[test]
    fn persistent_cache_is_bounded() {
        let mut b = BackBench::new(
            BackendConfig {
                persistent: true,
                max_persistent_grants: 16,
                ..cfg()
            },
            4096,
            false,
        );
        assert!(b.connect(RawFrontConfig {
            persistent: true,
            ..RawFrontConfig::default()
        }));
        assert!(b.be.borrow().negotiated().unwrap().persistent);
        let mut ok = 0;
        for i in 0..200u64 {
            let p = DATA_BASE + (i as usize % 100);
            assert!(b.push(
                0,
                &WireRequest::rw(BlkifOp::Write, i, 0, i * 8, &[seg(p, 0, 7)])
            ));
            if i % 7 == 0 {
                b.poll();
                ok += b.responses(0).iter().filter(|r| r.status == 0).count();
                assert!(b.hv.live_maps() <= 16 + 1);
            }
        }
        b.poll();
        ok += b.responses(0).iter().filter(|r| r.status == 0).count();
        assert_eq!(ok, 200);
        let st = b.be.borrow().stats();
        assert!(st.persistent_evictions >= 100, "{st:?}");
        assert!(b.be.borrow().persistent_grants() <= 16);
        b.close();
        assert_eq!(b.leftovers(), (0, 0));
    }

    /// XSA-332 class: a frontend that keeps the ring full cannot keep the backend busy for
    /// more than `budget` requests per queue per poll; the rest waits for the next poll.
    #[test]
    fn xsa332_bounded_work_per_event() {
        let mut b = bench(BackendConfig { budget: 4, ..cfg() });
        for i in 0..32u64 {
            assert!(b.push(
                0,
                &WireRequest::rw(BlkifOp::Read, i, 0, 0, &[seg(DATA_BASE, 0, 0)])
            ));
        }
        let r = b.be.borrow_mut().poll();
        assert_eq!(r.requests, 4);
        assert!(r.more);
        // The store completes at once, so the same poll answered those four; the next poll
        // takes (and answers) four more, no more.
        assert_eq!(b.responses(0).len(), 4);
        let r = b.be.borrow_mut().poll();
        assert_eq!(r.requests, 4);
        assert!(r.more);
        assert_eq!(b.responses(0).len(), 4);
        b.poll();
        assert_eq!(b.responses(0).len(), 24);
    }

    /// Copy mode: a failed grant copy is an error response; the pool pages come back.
    #[test]
    fn copy_mode_copy_failures() {
        let mut b = bench(BackendConfig {
            data_path: DataPath::Copy,
            copy_pool_pages: 80,
            ..cfg()
        });
        b.hv.state().copy_script.extend([0, -1]);
        b.push(
            0,
            &WireRequest::rw(
                BlkifOp::Write,
                1,
                0,
                0,
                &[seg(DATA_BASE, 0, 7), seg(DATA_BASE + 1, 0, 7)],
            ),
        );
        b.push(
            0,
            &WireRequest::rw(BlkifOp::Write, 2, 0, 0, &[seg(DATA_BASE, 0, 7)]),
        );
        b.poll();
        let r: Vec<(u64, i16)> = b.responses(0).iter().map(|r| (r.id, r.status)).collect();
        assert_eq!(r, vec![(1, -1), (2, 0)]);
        assert_eq!(b.hv.live_maps(), 1, "copy mode maps only the ring");
        b.close();
        assert_eq!(b.leftovers(), (0, 0));
    }

    // ------------------------------------------------------------------ hostile backends

    fn front(trusted: bool, persistent: bool) -> FrontBench {
        let mut f = FrontBench::new(
            FrontendConfig {
                persistent,
                ..FrontendConfig::default()
            },
            trusted,
        );
        assert!(
            f.connect(RawBackConfig {
                persistent,
                ..RawBackConfig::default()
            }),
            "{f:?}"
        );
        f
    }

    /// A bio over fresh pages of the frontend's arena (filled with `fill`).
    fn bio(
        f: &FrontBench,
        op: BioOp,
        sector: u64,
        segs: &[(u8, u8)],
        fill: u8,
        tag: u64,
    ) -> Bio<'static> {
        let fe = f.fe.borrow();
        let bufs = segs
            .iter()
            .map(|&(a, z)| {
                let run = xen_blkfront::FrontendEnv::alloc_pages(fe.env(), 1).expect("page");
                run.mem.fill(0, 4096, fill).unwrap();
                BufSeg {
                    gfn: run.gfn,
                    page: run.mem,
                    offset: u16::from(a) * 512,
                    len: u16::from(z - a + 1) * 512,
                }
            })
            .collect();
        Bio::new(op, sector, bufs, tag)
    }

    fn completions(f: &FrontBench) -> Vec<(u64, Result<(), BioError>)> {
        let mut v = Vec::new();
        while let Some(c) = f.fe.borrow_mut().pop_completion() {
            v.push((c.bio.tag, c.result));
        }
        v
    }

    fn front_failure(f: &FrontBench) -> Option<FrontFailure> {
        f.fe.borrow().failure().cloned()
    }

    /// The 2021 hardening (Linux b94e4b14): a response id that is not outstanding (never
    /// used, or answered already), the wrong operation, or a status outside `BLKIF_RSP_*`
    /// stops the device; every bio completes with an error, once; nothing panics.
    #[test]
    fn unknown_duplicate_wrong_op_bad_status() {
        type Hostile = fn(&WireRequest) -> WireResponse;
        type Check = fn(&FrontFailure) -> bool;
        let cases: [(Hostile, Check); 3] = [
            (
                |q| WireResponse {
                    id: q.id + 1000,
                    operation: q.operation,
                    status: 0,
                },
                |f| matches!(f, FrontFailure::UnknownId { .. }),
            ),
            (
                |q| WireResponse {
                    id: q.id,
                    operation: 1,
                    status: 0,
                },
                |f| {
                    matches!(
                        f,
                        FrontFailure::WrongOperation {
                            expected: 0,
                            got: 1,
                            ..
                        }
                    )
                },
            ),
            (
                |q| WireResponse {
                    id: q.id,
                    operation: q.operation,
                    status: 7,
                },
                |f| matches!(f, FrontFailure::BadStatus { status: 7, .. }),
            ),
        ];
        for (hostile, check) in cases {
            let mut f = front(true, false);
            for t in 0..3 {
                let b = bio(&f, BioOp::Read, t * 8, &[(0, 7)], 0, t);
                f.fe.borrow_mut().submit(b).unwrap();
            }
            let reqs = f.take_requests();
            assert_eq!(reqs.len(), 3);
            // The first is answered correctly, the second hostilely.
            f.respond(&WireResponse {
                id: reqs[0].id,
                operation: 0,
                status: 0,
            });
            f.respond(&hostile(&reqs[1]));
            f.poll();
            let fail = front_failure(&f).expect("failure");
            assert!(check(&fail), "{fail:?}");
            let c = completions(&f);
            assert_eq!(c.len(), 3, "{c:?}");
            assert_eq!(c[0], (0, Ok(())));
            assert!(
                c[1..].iter().all(|(_, r)| *r == Err(BioError::Failed)),
                "{c:?}"
            );
            assert_eq!(f.state(), XenbusState::Closing);
            assert!(f.xs.get_str(&format!("{FE_DIR}/error")).is_some());
            // Later bios are refused, not queued.
            let b = bio(&f, BioOp::Read, 0, &[(0, 0)], 0, 9);
            assert_eq!(
                f.fe.borrow_mut().submit(b).map_err(|(_, e)| e),
                Err(BioError::Failed)
            );
        }
        // Duplicate: with two requests outstanding, the first is answered twice (the ring
        // allows two responses; the second names a slot no longer outstanding).
        let mut f = front(true, false);
        for t in 1..=2 {
            let b = bio(&f, BioOp::Read, 0, &[(0, 7)], 0, t);
            f.fe.borrow_mut().submit(b).unwrap();
        }
        let q = f.take_requests();
        let ok = WireResponse {
            id: q[0].id,
            operation: 0,
            status: 0,
        };
        assert!(f.respond(&ok));
        assert!(f.respond(&ok));
        f.poll();
        assert!(
            matches!(front_failure(&f), Some(FrontFailure::UnknownId { .. })),
            "{:?}",
            front_failure(&f)
        );
        assert_eq!(
            completions(&f),
            vec![(1, Ok(())), (2, Err(BioError::Failed))]
        );
    }

    /// ring.h: `rsp_prod` beyond the requests published is a ring fault; the device stops.
    #[test]
    fn ring_response_prod_overflow_stops_device() {
        let mut f = front(true, false);
        let b = bio(&f, BioOp::Read, 0, &[(0, 7)], 0, 1);
        f.fe.borrow_mut().submit(b).unwrap();
        let frame = grant_entry(f.hv, f.ring_ref).unwrap().2 as usize;
        f.hv.pages(frame, 1)
            .unwrap()
            .store_release_u32(8, 5)
            .unwrap();
        f.poll();
        assert!(
            matches!(
                front_failure(&f),
                Some(FrontFailure::Ring {
                    fault: Fault::ResponseOverflow { .. },
                    ..
                })
            ),
            "{:?}",
            front_failure(&f)
        );
        assert_eq!(completions(&f), vec![(1, Err(BioError::Failed))]);
    }

    /// Flush and barrier toggled off on a writable disk: a backend that offers neither gets
    /// no flush or barrier request (refused locally, writes still served); one that offers
    /// them but answers `BLKIF_RSP_EOPNOTSUPP` fails that bio with "not supported", the
    /// device stays up, and the frontend stops asking.
    #[test]
    fn flush_and_barrier_unoffered_or_refused() {
        let mut f = FrontBench::new(FrontendConfig::default(), true);
        assert!(f.connect(RawBackConfig {
            flush: false,
            ..RawBackConfig::default()
        }));
        let d = f.fe.borrow().disk().unwrap();
        assert!(!d.flush && !d.barrier && !d.readonly, "{d:?}");
        let refused =
            |f: &FrontBench, b: Bio<'static>| f.fe.borrow_mut().submit(b).map_err(|(_, e)| e);
        assert_eq!(refused(&f, Bio::flush(1)), Err(BioError::NotSupported));
        let b = bio(&f, BioOp::Barrier, 0, &[(0, 7)], 0x44, 2);
        assert_eq!(refused(&f, b), Err(BioError::NotSupported));
        assert!(
            f.take_requests().is_empty(),
            "a refused bio reached the ring"
        );
        let b = bio(&f, BioOp::Write, 0, &[(0, 7)], 0x44, 3);
        f.fe.borrow_mut().submit(b).unwrap();
        let q = f.take_requests();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].operation, BlkifOp::Write.value());

        for (op, wire) in [
            (BioOp::Flush, BlkifOp::FlushDiskcache),
            (BioOp::Barrier, BlkifOp::WriteBarrier),
        ] {
            let mut f = front(true, false);
            let d = f.fe.borrow().disk().unwrap();
            assert!(d.flush && d.barrier, "{d:?}");
            let b = if op == BioOp::Flush {
                Bio::flush(1)
            } else {
                bio(&f, op, 0, &[(0, 7)], 0x44, 1)
            };
            f.fe.borrow_mut().submit(b).unwrap();
            let q = f.take_requests();
            assert_eq!(q.len(), 1);
            assert_eq!(q[0].operation, wire.value());
            assert!(f.respond(&WireResponse {
                id: q[0].id,
                operation: q[0].operation,
                status: BlkifStatus::Eopnotsupp.value(),
            }));
            f.poll();
            assert_eq!(completions(&f), vec![(1, Err(BioError::NotSupported))]);
            assert!(front_failure(&f).is_none(), "{:?}", front_failure(&f));
            assert_eq!(f.state(), XenbusState::Connected);
            let d = f.fe.borrow().disk().unwrap();
            assert!(!d.barrier, "{op:?}: barrier still used: {d:?}");
            assert_eq!(d.flush, op == BioOp::Barrier, "{op:?}: {d:?}");
            let again = if op == BioOp::Flush {
                Bio::flush(2)
            } else {
                bio(&f, op, 0, &[(0, 7)], 0x44, 2)
            };
            assert_eq!(refused(&f, again), Err(BioError::NotSupported));
            assert!(f.take_requests().is_empty());
        }
    }

    /// XSA-391: a backend storming the frontend with events. An event with nothing new
    /// answered does no work (no response taken, no bio completed, nothing re-issued, no
    /// event sent back); one poll takes at most what was answered (a ring's worth); the
    /// device stays connected and serves bios after the storm.
    #[test]
    fn xsa391_backend_event_storm_does_no_work() {
        let mut f = front(true, false);
        let ring = f.fe.borrow().negotiated().unwrap().ring_entries as usize;
        let extra = 8;
        for t in 0..(ring + extra) as u64 {
            let b = bio(&f, BioOp::Read, t * 8, &[(0, 7)], 0, t);
            f.fe.borrow_mut().submit(b).unwrap();
        }
        let reqs = f.take_requests();
        assert_eq!(reqs.len(), ring, "the ring is full, the rest waits");
        let storm = |f: &mut FrontBench| {
            let before = f.fe.borrow().stats();
            for _ in 0..10_000 {
                let r = f.poll();
                assert_eq!(
                    (r.responses, r.completed, r.more, r.control),
                    (0, 0, false, false)
                );
            }
            assert_eq!(f.fe.borrow().stats(), before, "a spurious event did work");
            assert!(
                f.take_requests().is_empty(),
                "a spurious event issued requests"
            );
            assert!(front_failure(f).is_none());
        };
        storm(&mut f);
        // Everything answered at once: one poll takes them all (never more than the ring
        // holds) and issues the waiting bios into the freed slots.
        for q in &reqs {
            assert!(f.respond(&WireResponse {
                id: q.id,
                operation: 0,
                status: 0,
            }));
        }
        let r = f.poll();
        assert_eq!((r.responses as usize, r.completed as usize), (ring, ring));
        let rest = f.take_requests();
        assert_eq!(rest.len(), extra);
        // Storming again, with the response index unchanged, takes nothing twice.
        storm(&mut f);
        for q in &rest {
            assert!(f.respond(&WireResponse {
                id: q.id,
                operation: 0,
                status: 0,
            }));
        }
        f.poll();
        let c = completions(&f);
        assert_eq!(c.len(), ring + extra);
        assert!(c.iter().all(|(_, r)| r.is_ok()), "{c:?}");
        assert_eq!(f.state(), XenbusState::Connected);
    }

    /// XSA-396: the backend answers but keeps the data page (the caller's own, trusted
    /// mode) mapped. The device fails, and the bio is *not* handed back while the page is
    /// still shared: its grant stays live until the backend unmaps, then the bio completes.
    #[test]
    fn xsa396_caller_page_not_returned_while_mapped() {
        let mut f = front(true, false);
        let b = bio(&f, BioOp::Write, 0, &[(0, 7)], 0x33, 1);
        let gfn = b.segs[0].gfn;
        f.fe.borrow_mut().submit(b).unwrap();
        let q = f.take_requests()[0];
        let WireBody::Rw { seg, .. } = q.body else {
            panic!()
        };
        let gref = seg[0].gref;
        assert_eq!(
            grant_entry(f.hv, gref).unwrap().2 as u64,
            gfn,
            "trusted: the caller's page"
        );
        set_mapped(f.hv, gref, true);
        f.respond(&WireResponse {
            id: q.id,
            operation: 1,
            status: 0,
        });
        f.poll();
        assert!(matches!(
            front_failure(&f),
            Some(FrontFailure::GrantStillMapped { .. })
        ));
        assert!(
            completions(&f).is_empty(),
            "bio handed back while its page is mapped"
        );
        let (flags, _, frame) = grant_entry(f.hv, gref).unwrap();
        assert!(
            flags & 1 != 0 && u64::from(frame) == gfn,
            "grant ended under the mapping"
        );
        for _ in 0..3 {
            f.poll();
        }
        assert!(completions(&f).is_empty());
        set_mapped(f.hv, gref, false);
        f.poll();
        assert_eq!(completions(&f), vec![(1, Err(BioError::Io))]);
        assert_eq!(grant_entry(f.hv, gref).unwrap().0 & 1, 0, "access ended");
    }

    /// XSA-396 with the frontend's own pages (bounce and indirect): a page the backend still
    /// maps goes to the grant table's deferred list and is only freed once unmapped.
    #[test]
    fn xsa396_own_pages_deferred_until_unmapped() {
        let mut f = front(false, false);
        let free0 = f.fe.borrow().env().free_pages_count();
        let b = bio(&f, BioOp::Read, 0, &[(0, 7)], 0, 1);
        f.fe.borrow_mut().submit(b).unwrap();
        let q = f.take_requests()[0];
        let WireBody::Rw { seg, .. } = q.body else {
            panic!()
        };
        let gref = seg[0].gref;
        set_mapped(f.hv, gref, true);
        f.respond(&WireResponse {
            id: q.id,
            operation: 0,
            status: 0,
        });
        f.poll();
        assert!(matches!(
            front_failure(&f),
            Some(FrontFailure::GrantStillMapped { .. })
        ));
        // The bio (its own page was never shared) completes; the bounce page does not
        // come back.
        assert_eq!(completions(&f), vec![(1, Err(BioError::Io))]);
        // Deferred: the bounce page, and the ring the backend still maps.
        assert_eq!(f.fe.borrow().env().poll_deferred().pending, 2);
        assert!(f.fe.borrow().env().free_pages_count() < free0);
        set_mapped(f.hv, gref, false);
        assert_eq!(f.fe.borrow().env().poll_deferred().completed, 1);
        set_mapped(f.hv, f.ring_ref, false);
        assert_eq!(f.fe.borrow().env().poll_deferred().completed, 1);
        assert_eq!(f.fe.borrow().env().table.stats().deferred_pending, 0);
        assert_eq!(
            f.fe.borrow().env().free_pages_count(),
            free0,
            "every page came back"
        );
    }

    /// XSA-403: with `trusted` = 0 the backend is granted bounce pages that hold only the
    /// data: no byte of the caller's page outside the segment, and no stale data.
    #[test]
    fn xsa403_untrusted_backend_sees_only_the_data() {
        for trusted in [false, true] {
            let mut f = front(trusted, false);
            // The caller's page is "secret" (0x5a) except the two sectors written.
            let b = bio(&f, BioOp::Write, 8, &[(2, 3)], 0x5a, 1);
            b.segs[0].page.fill(1024, 1024, 0x11).unwrap();
            let gfn = b.segs[0].gfn;
            f.fe.borrow_mut().submit(b).unwrap();
            let q = f.take_requests()[0];
            let WireBody::Rw { seg, .. } = q.body else {
                panic!()
            };
            assert_eq!((seg[0].first_sect, seg[0].last_sect), (2, 3));
            let frame = u64::from(grant_entry(f.hv, seg[0].gref).unwrap().2);
            let mut page = vec![0u8; 4096];
            f.hv.pages(frame as usize, 1)
                .unwrap()
                .copy_to_slice(0, &mut page)
                .unwrap();
            if trusted {
                assert_eq!(frame, gfn);
            } else {
                assert_ne!(frame, gfn, "the caller's page was granted");
                assert!(page[1024..2048].iter().all(|&x| x == 0x11));
                assert!(
                    page[..1024].iter().chain(&page[2048..]).all(|&x| x == 0),
                    "bounce page leaks"
                );
                assert_eq!(f.fe.borrow().stats().bounced, 1);
            }
            f.respond(&WireResponse {
                id: q.id,
                operation: 1,
                status: 0,
            });
            f.poll();
            assert_eq!(completions(&f), vec![(1, Ok(()))]);
            assert_eq!(
                grant_entry(f.hv, seg[0].gref).unwrap().0 & 1,
                0,
                "grant ended"
            );
        }
    }

    /// XSA-155 on the frontend: the backend rewrites a response slot after publishing it.
    /// The frontend acts on its one copy; later rewrites change nothing.
    #[test]
    fn xsa155_response_slot_rewritten_after_copy() {
        let mut f = front(true, false);
        let b = bio(&f, BioOp::Read, 0, &[(0, 7)], 0, 1);
        f.fe.borrow_mut().submit(b).unwrap();
        let q = f.take_requests()[0];
        f.respond(&WireResponse {
            id: q.id,
            operation: 0,
            status: 0,
        });
        f.poll();
        assert_eq!(completions(&f), vec![(1, Ok(()))]);
        // Rewrite the consumed slot into a "response" for another id, and an error status:
        // not re-read (rsp_prod did not move).
        let frame = grant_entry(f.hv, f.ring_ref).unwrap().2 as usize;
        let ring = f.hv.pages(frame, 1).unwrap();
        ring.store_relaxed_u32(64, 5).unwrap();
        ring.store_relaxed_u32(64 + 8, 0xffff_0000).unwrap();
        f.poll();
        assert!(front_failure(&f).is_none());
        assert!(completions(&f).is_empty());
    }

    /// Persistent grants on the frontend: requests use the pool's pages, never the caller's,
    /// and the pool is reused (LIFO) across requests.
    #[test]
    fn persistent_pool_reused() {
        let mut f = front(true, true);
        assert!(f.fe.borrow().negotiated().unwrap().persistent);
        let mut frames = Vec::new();
        for t in 0..4u64 {
            let b = bio(&f, BioOp::Write, t * 8, &[(0, 7)], t as u8, t);
            let gfn = b.segs[0].gfn;
            f.fe.borrow_mut().submit(b).unwrap();
            let q = f.take_requests()[0];
            let WireBody::Rw { seg, .. } = q.body else {
                panic!()
            };
            let frame = u64::from(grant_entry(f.hv, seg[0].gref).unwrap().2);
            assert_ne!(frame, gfn);
            frames.push(seg[0].gref);
            f.respond(&WireResponse {
                id: q.id,
                operation: 1,
                status: 0,
            });
            f.poll();
            assert_eq!(completions(&f), vec![(t, Ok(()))]);
        }
        assert!(
            frames.windows(2).all(|w| w[0] == w[1]),
            "pool page not reused: {frames:?}"
        );
    }

    /// Indirect requests from the frontend carry exactly the bio's segments.
    #[test]
    fn indirect_descriptors_match_the_bio() {
        let mut f = FrontBench::new(
            FrontendConfig {
                persistent: false,
                ..FrontendConfig::default()
            },
            true,
        );
        assert!(f.connect(RawBackConfig {
            indirect: 32,
            ..RawBackConfig::default()
        }));
        let segs: Vec<(u8, u8)> = (0..40u8).map(|i| (i % 8, 7)).collect();
        let b = bio(&f, BioOp::Write, 0, &segs, 1, 1);
        f.fe.borrow_mut().submit(b).unwrap();
        let reqs = f.take_requests();
        assert_eq!(reqs.len(), 2, "40 segments in requests of at most 32");
        let WireBody::Indirect {
            nr_segments,
            indirect_grefs,
            indirect_op,
        } = reqs[0].body
        else {
            panic!("{:?}", reqs[0]);
        };
        assert_eq!((nr_segments, indirect_op), (32, 1));
        let frame = grant_entry(f.hv, indirect_grefs[0]).unwrap().2 as usize;
        let mut img = vec![0u8; 32 * 8];
        f.hv.pages(frame, 1)
            .unwrap()
            .copy_to_slice(0, &mut img)
            .unwrap();
        let mut descs = Vec::new();
        xen_blkback::proto::decode_indirect_page(&img, &mut descs, 32);
        for (i, d) in descs.iter().enumerate() {
            assert_eq!((d.first_sect, d.last_sect), (i as u8 % 8, 7));
        }
        assert!(matches!(reqs[1].body, WireBody::Rw { nr_segments: 8, .. }));
        for q in &reqs {
            f.respond(&WireResponse {
                id: q.id,
                operation: 1,
                status: 0,
            });
        }
        f.poll();
        assert_eq!(completions(&f), vec![(1, Ok(()))]);
    }

    // ------------------------------------------------------------------ negotiation

    /// Both multi-page schemes (blkif.h note 3): a frontend that only writes the older
    /// `num-ring-pages` gets its multi-page ring; a backend that only offers `max-ring-pages`
    /// gets one from our frontend, which publishes both schemes.
    #[test]
    fn legacy_ring_page_schemes() {
        let mut b = BackBench::new(cfg(), 4096, false);
        assert!(b.connect(RawFrontConfig {
            order: 2,
            legacy_pages: true,
            ..RawFrontConfig::default()
        }));
        let n = b.be.borrow().negotiated().unwrap();
        assert_eq!((n.ring_page_order, n.ring_entries), (2, 128));
        assert_eq!(
            b.xs.get_str(&format!("{BE_DIR}/max-ring-pages")).as_deref(),
            Some("16")
        );
        assert_eq!(
            b.xs.get_str(&format!("{BE_DIR}/max-ring-page-order"))
                .as_deref(),
            Some("4")
        );

        let mut f = FrontBench::new(FrontendConfig::default(), true);
        assert!(
            f.connect(RawBackConfig {
                max_ring_pages: Some(4),
                ..RawBackConfig::default()
            }),
            "{f:?}"
        );
        assert_eq!(
            f.xs.get_str(&format!("{FE_DIR}/ring-page-order"))
                .as_deref(),
            Some("2")
        );
        assert_eq!(
            f.xs.get_str(&format!("{FE_DIR}/num-ring-pages")).as_deref(),
            Some("4")
        );
        assert!(f.xs.get(&format!("{FE_DIR}/ring-ref")).is_none());
        assert!(f.xs.get(&format!("{FE_DIR}/ring-ref3")).is_some());
        assert_eq!(f.fe.borrow().negotiated().unwrap().ring_entries, 128);
        let b = bio(&f, BioOp::Read, 0, &[(0, 7)], 0, 1);
        f.fe.borrow_mut().submit(b).unwrap();
        let q = f.take_requests()[0];
        f.respond(&WireResponse {
            id: q.id,
            operation: 0,
            status: 0,
        });
        f.poll();
        assert_eq!(completions(&f), vec![(1, Ok(()))]);
    }

    /// Transport parameters beyond the offer, or an unknown ring layout, are refused: the
    /// backend logs the reason, writes `error` and closes; nothing is mapped.
    #[test]
    fn frontend_asks_beyond_the_offer() {
        let mut b = BackBench::new(
            BackendConfig {
                max_queues: 2,
                max_ring_page_order: 1,
                ..cfg()
            },
            4096,
            false,
        );
        assert!(!b.connect(RawFrontConfig {
            queues: 3,
            ..RawFrontConfig::default()
        }));
        assert!(
            matches!(failed(&b), Some(Failure::Negotiation(_))),
            "{:?}",
            failed(&b)
        );
        assert!(b
            .xs
            .get_str(&format!("{BE_DIR}/error"))
            .unwrap()
            .contains("multi-queue-num-queues 3"));
        assert_eq!(b.state(), XenbusState::Closing);
        assert_eq!(b.leftovers(), (0, 0));

        let mut b = BackBench::new(
            BackendConfig {
                max_ring_page_order: 1,
                ..cfg()
            },
            4096,
            false,
        );
        assert!(!b.connect(RawFrontConfig {
            order: 2,
            ..RawFrontConfig::default()
        }));
        assert!(b
            .xs
            .get_str(&format!("{BE_DIR}/error"))
            .unwrap()
            .contains("ring-page-order 2"));

        let mut b = BackBench::new(cfg(), 4096, false);
        b.xs.set(&format!("{FE_DIR}/protocol"), b"arm-abi");
        b.xs.set(&format!("{FE_DIR}/ring-ref"), b"100");
        b.xs.set(&format!("{FE_DIR}/event-channel"), b"10");
        b.hv.grant(100, 0, false);
        b.xs.set(&format!("{FE_DIR}/state"), b"3");
        b.settle();
        assert!(b
            .xs
            .get_str(&format!("{BE_DIR}/error"))
            .unwrap()
            .contains("unsupported protocol"));
        assert_eq!(b.leftovers(), (0, 0));
        // A ring grant that does not exist.
        let mut b = BackBench::new(cfg(), 4096, false);
        b.xs.set(&format!("{FE_DIR}/ring-ref"), b"99999");
        b.xs.set(&format!("{FE_DIR}/event-channel"), b"10");
        b.xs.set(&format!("{FE_DIR}/state"), b"3");
        b.settle();
        assert!(b
            .xs
            .get_str(&format!("{BE_DIR}/error"))
            .unwrap()
            .contains("mapping ring"));
        assert_eq!(b.leftovers(), (0, 0));
    }

    /// A frontend that restarts (Closed, then Initialising) gets a fresh connection; the old
    /// persistent grants and ring are gone.
    #[test]
    fn frontend_reconnects_from_closed() {
        let mut b = BackBench::new(
            BackendConfig {
                persistent: true,
                ..cfg()
            },
            4096,
            false,
        );
        assert!(b.connect(RawFrontConfig {
            persistent: true,
            ..RawFrontConfig::default()
        }));
        b.push(
            0,
            &WireRequest::rw(BlkifOp::Write, 1, 0, 0, &[seg(DATA_BASE, 0, 7)]),
        );
        b.poll();
        assert_eq!(b.be.borrow().persistent_grants(), 1);
        b.close();
        assert_eq!(b.state(), XenbusState::Closed);
        assert_eq!(b.leftovers(), (0, 0));
        b.xs.set(&format!("{FE_DIR}/state"), b"1");
        b.settle();
        assert_eq!(b.state(), XenbusState::InitWait);
        assert!(b.connect(RawFrontConfig {
            order: 1,
            ..RawFrontConfig::default()
        }));
        assert_eq!(b.be.borrow().stats().connections, 2);
        b.push(
            0,
            &WireRequest::rw(BlkifOp::Read, 2, 0, 0, &[seg(DATA_BASE, 0, 7)]),
        );
        b.poll();
        assert_eq!(b.responses(0)[0].status, 0);
    }
}
