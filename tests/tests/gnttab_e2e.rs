//! Grant tables end to end: `xen-gnttab` in two simulated domains over `xensim`.
//!
//! One domain grants pages with its own `GrantTable` (frames set up through the simulated
//! `XENMEM_add_to_physmap`), the other maps and copies them with the batch API; the simulator
//! applies Xen's permission and pin semantics to the granter's real entries. Also: event
//! channels between the two, injected faults, a peer dying, and `/dev/xen/gntdev` driven
//! through its FreeBSD ioctl entry points.

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use xen_gnttab::gntdev::{
        abi::{self, Abi},
        Errno, Gntdev, GntdevPlatform, Limits, MmapTarget, ObjectId, UserContext,
    };
    use xen_gnttab::{
        copy_grants, map_grants, unmap_grants, CopyPtr, ForeignMapping, GntStatus, GrantCopy,
        GrantError, GrantRef, GrantTable, MapGrant, MapRangeError, PageAccessError, Revoke,
    };
    use xen_kmod::{EventChannelOp, GrantTableOp, Hypervisor, XenError};
    use xen_sys::x86_64 as xabi;
    use xen_tests::xensim::events::PortState;
    use xen_tests::xensim::faults::{
        BatchAbort, EventAction, EventChaos, EventFault, GrantFault, GrantOp,
    };
    use xen_tests::xensim::grants::{SimForeignMemory, SimSetupTableFrames, SimTableFrames};
    use xen_tests::xensim::hypervisor::MemFault;
    use xen_tests::xensim::{DomainConfig, DomainHandle, SimConfig, SimHypervisor};

    type Table<'a> = GrantTable<'a, DomainHandle, SimTableFrames<'a>>;

    fn two_domains() -> (SimHypervisor, DomainHandle, DomainHandle) {
        let sim = SimHypervisor::new(SimConfig::default());
        let back = sim.create_domain(DomainConfig::dom0()).unwrap();
        let front = sim.create_domain(DomainConfig::guest()).unwrap();
        (sim, front, back)
    }

    fn table(h: &DomainHandle) -> Table<'_> {
        GrantTable::new(h.clone(), SimTableFrames::new(h), 1).unwrap()
    }

    fn fill(h: &DomainHandle, gfn: u64, byte: u8) {
        h.write(gfn, 0, &[byte; 4096]).unwrap();
    }

    fn bytes(h: &DomainHandle, gfn: u64, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        h.read(gfn, off, &mut v).unwrap();
        v
    }

    // ---- event channel helpers ----

    fn alloc_unbound(h: &DomainHandle, remote: u16) -> u32 {
        let mut a = xabi::evtchn_alloc_unbound {
            dom: 0x7ff0,
            remote_dom: remote,
            port: 0,
        };
        h.event_channel_op(EventChannelOp::AllocUnbound(&mut a))
            .unwrap();
        a.port
    }

    fn bind(h: &DomainHandle, remote: u16, rport: u32) -> u32 {
        let mut b = xabi::evtchn_bind_interdomain {
            remote_dom: remote,
            remote_port: rport,
            ..Default::default()
        };
        h.event_channel_op(EventChannelOp::BindInterdomain(&mut b))
            .unwrap();
        b.local_port
    }

    fn send(h: &DomainHandle, port: u32) -> Result<(), XenError> {
        h.event_channel_op(EventChannelOp::Send(&mut xabi::evtchn_send { port }))
    }

    const PENDING: usize = 2048;
    const MASK: usize = 2560;

    fn pending(h: &DomainHandle, port: u32) -> bool {
        let w = h
            .shared_info()
            .load_acquire_u32(PENDING + (port as usize / 32) * 4)
            .unwrap();
        w & (1 << (port % 32)) != 0
    }

    fn clear_pending(h: &DomainHandle, port: u32) {
        let off = PENDING + (port as usize / 32) * 4;
        let si = h.shared_info();
        let w = si.load_acquire_u32(off).unwrap();
        si.store_release_u32(off, w & !(1 << (port % 32))).unwrap();
    }

    fn upcall_pending(h: &DomainHandle) -> bool {
        h.shared_info().load_acquire_u32(0).unwrap() & 1 != 0
    }

    /// What the guest's upcall handler does first: clear `evtchn_upcall_pending` and the
    /// selector word.
    fn ack_upcall(h: &DomainHandle) {
        let si = h.shared_info();
        let w = si.load_acquire_u32(0).unwrap();
        si.store_release_u32(0, w & !0xff).unwrap();
        si.store_release_u32(8, 0).unwrap();
        si.store_release_u32(12, 0).unwrap();
    }

    // ---- grants ----

    #[test]
    fn granted_page_is_the_same_bytes_both_ways() {
        let (sim, front, back) = two_domains();
        let t = table(&front);
        let gfn = front.alloc_page().unwrap();
        fill(&front, gfn, 0xa5);
        let r = t.grant(back.domid(), gfn, false).unwrap();
        assert_eq!(sim.stats().grant_maps, 0);

        let slots = SimForeignMemory::new(&back);
        let m = ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], false).unwrap();
        assert_eq!(back.mappings(), 1);
        let p = m.page(&slots, 0).unwrap();
        let mut buf = [0u8; 16];
        p.read(100, &mut buf).unwrap();
        assert_eq!(buf, [0xa5; 16], "the mapper sees the granter's bytes");
        p.write(100, b"written by back!").unwrap();
        assert_eq!(
            bytes(&front, gfn, 100, 16),
            b"written by back!",
            "and the granter sees its writes"
        );
        // The granter's entry shows the mapping.
        assert!(t.in_use(&r));
        // The mapped page is also in the mapper's physmap.
        let host_gfn = m.host_addr() / 4096;
        assert_eq!(bytes(&back, host_gfn, 100, 16), b"written by back!");

        m.unmap(&back, &slots).unwrap();
        assert_eq!(back.mappings(), 0);
        assert!(!t.in_use(&r));
        assert_eq!(back.read(host_gfn, 0, &mut buf), Err(MemFault::NotMapped));
        assert_eq!(t.revoke(r), Revoke::Done);
        let s = t.stats();
        assert_eq!((s.granted, s.revoked, s.deferred), (1, 1, 0));
    }

    #[test]
    fn readonly_is_enforced() {
        let (_sim, front, back) = two_domains();
        let t = table(&front);
        let gfn = front.alloc_page().unwrap();
        fill(&front, gfn, 7);
        let r = t.grant(back.domid(), gfn, true).unwrap();
        let slots = SimForeignMemory::new(&back);

        // A writable map of a read-only grant fails, and leaves nothing behind.
        match ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], false) {
            Err(MapRangeError::Map(e)) => assert_eq!(e.status, GntStatus::GeneralError),
            other => panic!("writable map of a r/o grant: {other:?}"),
        }
        assert_eq!(back.mappings(), 0);
        assert!(!t.in_use(&r));

        let m = ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], true).unwrap();
        let p = m.page(&slots, 0).unwrap();
        assert!(p.readonly());
        assert_eq!(p.write(0, b"x"), Err(PageAccessError::ReadOnly));
        let host_gfn = m.host_addr() / 4096;
        assert_eq!(
            back.write(host_gfn, 0, b"x"),
            Err(MemFault::ReadOnly),
            "the p2m refuses too"
        );
        assert!(back.page(host_gfn).is_none());
        assert_eq!(bytes(&back, host_gfn, 0, 4), [7; 4]);
        // A grant to another domain cannot be mapped by us.
        let r2 = t.grant(42, gfn, false).unwrap();
        assert!(ForeignMapping::map(&back, &slots, &[(front.domid(), r2.raw())], true).is_err());
        m.unmap(&back, &slots).unwrap();
        assert_eq!(t.revoke(r), Revoke::Done);
        assert_eq!(t.revoke(r2), Revoke::Done);
    }

    #[test]
    fn grant_copy_both_ways_with_bounds() {
        let (_sim, front, back) = two_domains();
        let t = table(&front);
        let fgfn = front.alloc_page().unwrap();
        let bgfn = back.alloc_page().unwrap();
        front.write(fgfn, 0, b"frontend data...").unwrap();
        back.write(bgfn, 0, b"backend data....").unwrap();
        let r = t.grant(back.domid(), fgfn, false).unwrap();
        let g = CopyPtr::Grant {
            dom: front.domid(),
            gref: r.raw(),
        };
        let l = CopyPtr::Local { gfn: bgfn };

        // front page -> back page, then back page -> front page.
        let mut ops = [
            GrantCopy::new(g, 0, l, 100, 16),
            GrantCopy::new(l, 0, g, 200, 16),
        ];
        copy_grants(&back, &mut ops).unwrap();
        assert_eq!(bytes(&back, bgfn, 100, 16), b"frontend data...");
        assert_eq!(bytes(&front, fgfn, 200, 16), b"backend data....");
        assert!(!t.in_use(&r), "copies leave no pins behind");

        // Bounds: refused locally, nothing copied.
        let mut bad = [
            GrantCopy::new(g, 4000, l, 0, 100),
            GrantCopy::new(g, 0, l, 4095, 2),
            GrantCopy::new(g, 0, l, 0, 4096),
        ];
        let e = copy_grants(&back, &mut bad).unwrap_err();
        assert_eq!((e.first_failed, e.failed), (0, 2));
        assert_eq!(
            bad.map(|o| o.status),
            [
                GntStatus::BadCopyArg,
                GntStatus::BadCopyArg,
                GntStatus::Okay
            ]
        );

        // The simulator enforces the same bound on raw requests (a guest need not use our code).
        let mut raw = [xabi::gnttab_copy {
            source: xabi::gnttab_copy_gnttab_copy_ptr {
                u: xabi::gnttab_copy_gnttab_copy_ptr__bindgen_ty_1 { gmfn: bgfn },
                domid: 0x7ff0,
                offset: 4090,
                __bindgen_padding_0: [0; 4],
            },
            dest: xabi::gnttab_copy_gnttab_copy_ptr {
                u: xabi::gnttab_copy_gnttab_copy_ptr__bindgen_ty_1 { gmfn: bgfn },
                domid: 0x7ff0,
                offset: 0,
                __bindgen_padding_0: [0; 4],
            },
            len: 10,
            flags: 0,
            status: 0,
            __bindgen_padding_0: [0; 2],
        }];
        back.grant_table_op(GrantTableOp::Copy(&mut raw)).unwrap();
        assert_eq!(GntStatus::from_raw(raw[0].status), GntStatus::BadCopyArg);
        // Copy-by-frame from another domain's memory is not allowed.
        raw[0].source.offset = 0;
        raw[0].source.domid = front.domid();
        raw[0].source.u = xabi::gnttab_copy_gnttab_copy_ptr__bindgen_ty_1 { gmfn: fgfn };
        back.grant_table_op(GrantTableOp::Copy(&mut raw)).unwrap();
        assert_eq!(
            GntStatus::from_raw(raw[0].status),
            GntStatus::PermissionDenied
        );

        // Writing into a read-only grant fails; reading from it works.
        let ro = t.grant(back.domid(), fgfn, true).unwrap();
        let gro = CopyPtr::Grant {
            dom: front.domid(),
            gref: ro.raw(),
        };
        let mut ops = [
            GrantCopy::new(l, 0, gro, 0, 4),
            GrantCopy::new(gro, 0, l, 0, 4),
        ];
        let e = copy_grants(&back, &mut ops).unwrap_err();
        assert_eq!(
            (e.first_failed, e.status, e.failed),
            (0, GntStatus::GeneralError, 1)
        );
        assert_eq!(ops[1].status, GntStatus::Okay);
        // Unknown reference and unknown domain.
        let mut ops = [
            GrantCopy::new(
                CopyPtr::Grant {
                    dom: front.domid(),
                    gref: 100_000,
                },
                0,
                l,
                0,
                4,
            ),
            GrantCopy::new(CopyPtr::Grant { dom: 99, gref: 8 }, 0, l, 0, 4),
        ];
        copy_grants(&back, &mut ops).unwrap_err();
        assert_eq!(
            ops.map(|o| o.status),
            [GntStatus::BadGntref, GntStatus::BadDomain]
        );
        assert_eq!(t.revoke(r), Revoke::Done);
        assert_eq!(t.revoke(ro), Revoke::Done);
    }

    #[test]
    fn revoke_while_mapped_is_deferred_counted_and_completes_after_unmap() {
        let (_sim, front, back) = two_domains();
        let t = table(&front);
        let gfn = front.alloc_page().unwrap();
        let r = t.grant(back.domid(), gfn, false).unwrap();
        let raw = r.raw();
        let slots = SimForeignMemory::new(&back);
        let m = ForeignMapping::map(&back, &slots, &[(front.domid(), raw)], false).unwrap();

        assert_eq!(
            t.revoke(r),
            Revoke::Deferred,
            "the page is still mapped: it must not be reused"
        );
        let mut released = Vec::new();
        let p = t.poll_deferred(|g| released.push(g));
        assert_eq!((p.completed, p.pending), (0, 1));
        // The backend can still write the page: that is why it was not reused.
        m.page(&slots, 0).unwrap().write(0, b"late").unwrap();
        assert_eq!(bytes(&front, gfn, 0, 4), b"late");
        // Meanwhile the entry still grants access (a second map would succeed).
        let m2 = ForeignMapping::map(&back, &slots, &[(front.domid(), raw)], true).unwrap();

        m.unmap(&back, &slots).unwrap();
        let p = t.poll_deferred(|g| released.push(g));
        assert_eq!(
            (p.completed, p.pending),
            (0, 1),
            "one read-only mapping left"
        );
        m2.unmap(&back, &slots).unwrap();
        let p = t.poll_deferred(|g| released.push(g));
        assert_eq!((p.completed, p.pending), (1, 0));
        assert_eq!(released, vec![u32::try_from(gfn).unwrap()]);
        let s = t.stats();
        assert_eq!(
            (s.deferred, s.deferred_completed, s.deferred_pending),
            (1, 1, 0)
        );
        assert!(s.deferred_retries >= 2);
        // Revoked now: new maps fail.
        assert!(ForeignMapping::map(&back, &slots, &[(front.domid(), raw)], true).is_err());
    }

    #[test]
    fn injected_map_failures_unwind_exactly() {
        let (sim, front, back) = two_domains();
        let t = table(&front);
        let refs: Vec<GrantRef> = (0..5)
            .map(|_| {
                t.grant(back.domid(), front.alloc_page().unwrap(), false)
                    .unwrap()
            })
            .collect();
        let list: Vec<(u16, u32)> = refs.iter().map(|r| (front.domid(), r.raw())).collect();
        let slots = SimForeignMemory::new(&back);

        // Entry #2 fails with GNTST_eagain: entries 0, 1, 3, 4 mapped, then unmapped again.
        sim.inject_grant_fault(GrantFault {
            skip: 2,
            ..GrantFault::next(GrantOp::Map, 1, GntStatus::Eagain.to_raw())
        });
        match ForeignMapping::map(&back, &slots, &list, false) {
            Err(MapRangeError::Map(e)) => {
                assert_eq!(
                    (e.first_failed, e.status, e.failed, e.stuck),
                    (2, GntStatus::Eagain, 1, 0)
                );
                assert!(e.status.is_transient());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(back.mappings(), 0);
        assert!(
            refs.iter().all(|r| !t.in_use(r)),
            "granter's flags cleared by the unwind"
        );
        let before = sim.stats();
        assert_eq!(before.grant_maps, 5);
        assert_eq!(
            before.grant_unmaps, 4,
            "exactly the successful entries were unmapped"
        );

        // The hypercall aborts after two entries (EFAULT): the rest were never processed.
        sim.inject_batch_abort(BatchAbort {
            op: GrantOp::Map,
            caller: Some(back.domid()),
            after: 2,
            error: XenError::EFAULT,
        });
        let mut ops: Vec<MapGrant> = list
            .iter()
            .zip(0u64..)
            .map(|(&(d, g), i)| MapGrant::new(d, g, (0x20_0000 + i) * 4096, false))
            .collect();
        let e = map_grants(&back, &mut ops).unwrap_err();
        assert_eq!(e.hypercall, Some(XenError::EFAULT));
        assert_eq!(e.failed, 3);
        assert!(ops.iter().all(|o| o.handle.is_none()));
        assert_eq!(back.mappings(), 0);

        // An unmap that fails keeps its handle; retrying succeeds.
        let mut ops: Vec<MapGrant> = list
            .iter()
            .zip(0u64..)
            .map(|(&(d, g), i)| MapGrant::new(d, g, (0x20_0000 + i) * 4096, true))
            .collect();
        map_grants(&back, &mut ops).unwrap();
        sim.inject_grant_fault(GrantFault {
            skip: 1,
            ..GrantFault::next(GrantOp::Unmap, 1, GntStatus::GeneralError.to_raw())
        });
        let mut handles: Vec<_> = ops.iter_mut().map(|o| o.handle.take()).collect();
        let e = unmap_grants(&back, &mut handles).unwrap_err();
        assert_eq!((e.first_failed, e.failed), (1, 1));
        assert_eq!(handles.iter().filter(|h| h.is_some()).count(), 1);
        assert!(t.in_use(&refs[1]));
        unmap_grants(&back, &mut handles).unwrap();
        assert!(refs.iter().all(|r| !t.in_use(r)));

        // Statuses outside Xen's list are carried, not trusted (and never panic).
        sim.inject_grant_fault(GrantFault::next(GrantOp::Map, 1, -77));
        let mut one = [MapGrant::new(
            front.domid(),
            refs[0].raw(),
            0x30_0000 * 4096,
            true,
        )];
        let e = map_grants(&back, &mut one).unwrap_err();
        assert_eq!(e.status, GntStatus::Unknown(-77));
        for r in refs {
            assert_eq!(t.revoke(r), Revoke::Done);
        }
    }

    #[test]
    fn bad_requests_get_xen_statuses() {
        let (_sim, front, back) = two_domains();
        let t = table(&front);
        let gfn = front.alloc_page().unwrap();
        let r = t.grant(back.domid(), gfn, false).unwrap();
        let base = 0x40_0000u64 * 4096;
        let mut ops = [
            MapGrant::new(front.domid(), 512 * 40, base, false), // beyond the table
            MapGrant::new(123, r.raw(), base + 4096, false),     // no such domain
            MapGrant::new(front.domid(), r.raw(), base + 10, false), // misaligned host address
            MapGrant::new(front.domid(), r.raw(), 4096, false),  // host address is RAM
            MapGrant::new(front.domid(), 3, base + 8192, false), // never granted
        ];
        let e = xen_gnttab::map_grants_each(&back, &mut ops).unwrap_err();
        assert_eq!(e.failed, 5);
        assert_eq!(
            ops.iter().map(|o| o.status).collect::<Vec<_>>(),
            [
                GntStatus::BadGntref,
                GntStatus::BadDomain,
                GntStatus::BadVirtAddr,
                GntStatus::BadVirtAddr,
                GntStatus::GeneralError
            ]
        );
        // Unmap of a handle we do not hold.
        let mut raw = [xabi::gnttab_unmap_grant_ref {
            handle: 77,
            ..Default::default()
        }];
        back.grant_table_op(GrantTableOp::UnmapGrantRef(&mut raw))
            .unwrap();
        assert_eq!(GntStatus::from_raw(raw[0].status), GntStatus::BadHandle);
        assert_eq!(t.revoke(r), Revoke::Done);
    }

    #[test]
    fn mapper_dying_releases_its_mappings_and_deferred_revokes_complete() {
        let (sim, front, back) = two_domains();
        let t = table(&front);
        let gfn = front.alloc_page().unwrap();
        let r = t.grant(back.domid(), gfn, false).unwrap();
        let slots = SimForeignMemory::new(&back);
        let _m = ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], false).unwrap();
        // Event channel between them, to see the peer's death.
        let fport = alloc_unbound(&front, back.domid());
        let bport = bind(&back, front.domid(), fport);
        clear_pending(&front, fport);
        assert_eq!(
            front.port_state(fport),
            PortState::Interdomain {
                remote: back.domid(),
                port: bport
            }
        );

        assert_eq!(t.revoke(r), Revoke::Deferred);
        assert!(sim.destroy_domain(back.domid()));
        assert!(!back.is_alive());
        assert_eq!(back.mappings(), 0);
        // The frontend's port is unbound again, and was notified.
        assert_eq!(
            front.port_state(fport),
            PortState::Unbound {
                remote: back.domid()
            }
        );
        assert!(pending(&front, fport));
        // Its deferred revoke completes now.
        let mut released = Vec::new();
        assert_eq!(t.poll_deferred(|g| released.push(g)).completed, 1);
        assert_eq!(released.len(), 1);
        // A dead domain makes no more hypercalls.
        assert_eq!(send(&back, bport), Err(XenError::ESRCH));
        assert!(!sim.destroy_domain(back.domid()));
    }

    #[test]
    fn granter_dying_keeps_existing_mappings_but_refuses_new_ones() {
        let (sim, front, back) = two_domains();
        let t = table(&front);
        let gfn = front.alloc_page().unwrap();
        fill(&front, gfn, 0x3c);
        let r = t.grant(back.domid(), gfn, false).unwrap();
        let slots = SimForeignMemory::new(&back);
        let m = ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], false).unwrap();
        let deaths = Arc::new(AtomicU32::new(0));
        let d2 = deaths.clone();
        sim.on_domain_destroyed(move |_| {
            d2.fetch_add(1, Ordering::SeqCst);
        });
        assert!(sim.destroy_domain(front.domid()));
        assert_eq!(deaths.load(Ordering::SeqCst), 1);
        // The page stays valid (a zombie) while mapped.
        let mut b = [0u8; 4];
        m.page(&slots, 0).unwrap().read(0, &mut b).unwrap();
        assert_eq!(b, [0x3c; 4]);
        // New maps and copies of the dead domain's grants fail cleanly.
        match ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], true) {
            Err(MapRangeError::Map(e)) => assert_eq!(e.status, GntStatus::BadDomain),
            other => panic!("{other:?}"),
        }
        let bgfn = back.alloc_page().unwrap();
        let mut c = [GrantCopy::new(
            CopyPtr::Grant {
                dom: front.domid(),
                gref: r.raw(),
            },
            0,
            CopyPtr::Local { gfn: bgfn },
            0,
            8,
        )];
        assert_eq!(
            copy_grants(&back, &mut c).unwrap_err().status,
            GntStatus::BadDomain
        );
        m.unmap(&back, &slots).unwrap();
        assert_eq!(back.mappings(), 0);
        // `r` is simply dropped: its table died with the domain, nothing to give back.
    }

    #[test]
    fn many_grants_grow_the_table_through_add_to_physmap() {
        let (_sim, front, back) = two_domains();
        let t = table(&front);
        assert_eq!(front.grant_table_size().0, 1);
        let gfn = front.alloc_page().unwrap();
        let refs: Vec<GrantRef> = (0..1500)
            .map(|_| t.grant(back.domid(), gfn, true).unwrap())
            .collect();
        assert_eq!(t.nr_frames(), 3);
        assert_eq!(front.grant_table_size(), (3, 32));
        // The highest reference is mappable: Xen (the sim) sees the grown table.
        let hi = refs.iter().map(GrantRef::raw).max().unwrap();
        let slots = SimForeignMemory::new(&back);
        let m = ForeignMapping::map(&back, &slots, &[(front.domid(), hi)], true).unwrap();
        m.unmap(&back, &slots).unwrap();
        for r in refs {
            assert_eq!(t.revoke(r), Revoke::Done);
        }
    }

    #[test]
    fn setup_table_path_works_too() {
        let (_sim, front, back) = two_domains();
        let t = GrantTable::new(front.clone(), SimSetupTableFrames::new(&front), 2).unwrap();
        assert_eq!(t.nr_frames(), 2);
        let gfn = front.alloc_page().unwrap();
        fill(&front, gfn, 9);
        let r = t.grant(back.domid(), gfn, true).unwrap();
        let slots = SimForeignMemory::new(&back);
        let m = ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], true).unwrap();
        let mut b = [0u8; 2];
        m.page(&slots, 0).unwrap().read(4094, &mut b).unwrap();
        assert_eq!(b, [9, 9]);
        m.unmap(&back, &slots).unwrap();
        assert_eq!(t.revoke(r), Revoke::Done);
    }

    #[test]
    fn table_exhaustion_is_an_error_not_a_panic() {
        let sim = SimHypervisor::new(SimConfig {
            max_grant_frames: 1,
            ..SimConfig::default()
        });
        let front = sim.create_domain(DomainConfig::guest()).unwrap();
        let t = table(&front);
        let gfn = front.alloc_page().unwrap();
        let refs: Vec<GrantRef> = (0..504).map(|_| t.grant(0, gfn, true).unwrap()).collect();
        assert_eq!(t.grant(0, gfn, true).unwrap_err(), GrantError::NoFreeRefs);
        assert_eq!(t.stats().grow_failures, 1);
        for r in refs {
            assert_eq!(t.revoke(r), Revoke::Done);
        }
    }

    #[test]
    fn two_threads_map_and_revoke_concurrently() {
        let (_sim, front, back) = two_domains();
        let t = table(&front);
        let slots = SimForeignMemory::new(&back);
        let pages: Vec<u64> = (0..32).map(|_| front.alloc_page().unwrap()).collect();
        // Front keeps granting and revoking; back keeps mapping whatever it is told and
        // unmapping. Every deferral must complete once back is done, and no page may be
        // released while back has it mapped.
        let (tx, rx) = std::sync::mpsc::channel::<u32>();
        let mapped_now: Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>> = Arc::default();
        std::thread::scope(|s| {
            let fd = front.domid();
            let mapped = mapped_now.clone();
            let back_ref = &back;
            let slots_ref = &slots;
            s.spawn(move || {
                for gref in rx {
                    if let Ok(m) = ForeignMapping::map(back_ref, slots_ref, &[(fd, gref)], false) {
                        mapped.lock().unwrap().insert(gref);
                        m.page(slots_ref, 0).unwrap().write(0, &[1]).unwrap();
                        mapped.lock().unwrap().remove(&gref);
                        m.unmap(back_ref, slots_ref).unwrap();
                    }
                }
            });
            let mut deferred = 0;
            for i in 0..2000usize {
                let gfn = pages[i % pages.len()];
                let r = t.grant(back.domid(), gfn, false).unwrap();
                tx.send(r.raw()).unwrap();
                if t.revoke(r) == Revoke::Deferred {
                    deferred += 1;
                }
                if i % 50 == 0 {
                    t.poll_deferred(|_| {});
                }
            }
            drop(tx);
            let _ = deferred;
        });
        // Back is done: everything deferred completes.
        t.poll_deferred(|_| {});
        let s = t.stats();
        assert_eq!(s.deferred_pending, 0, "{s:?}");
        assert_eq!(s.deferred, s.deferred_completed);
        assert_eq!(s.granted, 2000);
        assert_eq!(back.mappings(), 0);
    }

    #[test]
    fn simulator_level_errors() {
        let sim = SimHypervisor::new(SimConfig {
            machine_pages: 600,
            ..SimConfig::default()
        });
        let a = sim.create_domain(DomainConfig::guest()).unwrap();
        assert_eq!(a.domid(), 1);
        assert_eq!(
            sim.create_domain(DomainConfig {
                domid: Some(1),
                ..DomainConfig::guest()
            })
            .unwrap_err(),
            xen_tests::xensim::hypervisor::SimError::DomidInUse(1)
        );
        assert_eq!(
            sim.create_domain(DomainConfig {
                domid: Some(0x7ff0),
                ..DomainConfig::guest()
            })
            .unwrap_err(),
            xen_tests::xensim::hypervisor::SimError::DomidInUse(0x7ff0)
        );
        let _b = sim.create_domain(DomainConfig::guest()).unwrap();
        assert_eq!(
            sim.create_domain(DomainConfig::guest()).unwrap_err(),
            xen_tests::xensim::hypervisor::SimError::OutOfMemory
        );
        assert!(sim.domain(9).is_none());
        // Unprivileged domains cannot query or set up other domains' tables.
        let mut q = xabi::gnttab_query_size {
            dom: 2,
            ..Default::default()
        };
        a.grant_table_op(GrantTableOp::QuerySize(&mut q)).unwrap();
        assert_eq!(GntStatus::from_raw(q.status), GntStatus::PermissionDenied);
        // Grant table v2 is not offered.
        let mut v = xabi::gnttab_set_version { version: 2 };
        assert_eq!(
            a.grant_table_op(GrantTableOp::SetVersion(&mut v)),
            Err(XenError::EINVAL)
        );
        // Whole-hypercall faults.
        sim.inject_hypercall_fault(xen_tests::xensim::faults::HypercallFault {
            family: xen_tests::xensim::faults::Family::GrantTable,
            caller: Some(a.domid()),
            skip: 0,
            times: 1,
            error: XenError::EFAULT,
        });
        match GrantTable::new(a.clone(), SimTableFrames::new(&a), 1) {
            Err(GrantError::Hypercall(XenError::EFAULT)) => {}
            other => panic!("{other:?}"),
        }
        let t = table(&a);
        assert_eq!(t.nr_frames(), 1);
        // Unpopulated-space slots are handed out and come back.
        let g = a.reserve_gfns(4).unwrap();
        a.release_gfns(g, 4);
        assert_eq!(a.reserve_gfns(4), Some(g));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grant(bool),
        Map(usize, bool),
        Unmap(usize),
        Revoke(usize),
        Poll,
        Copy(usize, bool),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            3 => any::<bool>().prop_map(Op::Grant),
            3 => (any::<usize>(), any::<bool>()).prop_map(|(i, ro)| Op::Map(i, ro)),
            2 => any::<usize>().prop_map(Op::Unmap),
            2 => any::<usize>().prop_map(Op::Revoke),
            1 => Just(Op::Poll),
            2 => (any::<usize>(), any::<bool>()).prop_map(|(i, w)| Op::Copy(i, w)),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config { cases: 64, ..Default::default() })]

        /// Random grant/map/unmap/copy/revoke sequences between two simulated domains agree
        /// with a model: a map succeeds iff the reference is granted (and writable when asked
        /// to be), the granter's entry shows "in use" iff something maps it, a revoke defers
        /// iff something maps it, and every deferral completes once the last mapping goes.
        #[test]
        fn grant_semantics_match_the_model(ops in proptest::collection::vec(op(), 1..80)) {
            let (_sim, front, back) = two_domains();
            let t = table(&front);
            let slots = SimForeignMemory::new(&back);
            let bgfn = back.alloc_page().unwrap();
            // Live grants: (ref, readonly). Revoked-but-deferred refs stay mappable by nobody new.
            let mut grants: Vec<(GrantRef, bool)> = Vec::new();
            let mut maps: Vec<(u32, ForeignMapping)> = Vec::new();
            let mut deferred: Vec<u32> = Vec::new();
            for o in ops {
                match o {
                    Op::Grant(ro) => {
                        let gfn = front.alloc_page().unwrap_or(20);
                        grants.push((t.grant(back.domid(), gfn, ro).unwrap(), ro));
                    }
                    Op::Map(i, ro) if !grants.is_empty() => {
                        let (r, gro) = &grants[i % grants.len()];
                        let res = ForeignMapping::map(&back, &slots, &[(front.domid(), r.raw())], ro);
                        proptest::prop_assert_eq!(res.is_ok(), ro || !gro);
                        if let Ok(m) = res {
                            maps.push((r.raw(), m));
                        }
                    }
                    Op::Unmap(i) if !maps.is_empty() => {
                        let (_, m) = maps.swap_remove(i % maps.len());
                        m.unmap(&back, &slots).unwrap();
                    }
                    Op::Revoke(i) if !grants.is_empty() => {
                        let (r, _) = grants.swap_remove(i % grants.len());
                        let raw = r.raw();
                        let mapped = maps.iter().any(|(g, _)| *g == raw);
                        match t.revoke(r) {
                            Revoke::Done => {
                                proptest::prop_assert!(!mapped);
                                // Access ended: the reference cannot be mapped again.
                                proptest::prop_assert!(ForeignMapping::map(
                                    &back,
                                    &slots,
                                    &[(front.domid(), raw)],
                                    true
                                )
                                .is_err());
                            }
                            Revoke::Deferred => {
                                proptest::prop_assert!(mapped);
                                deferred.push(raw);
                            }
                        }
                    }
                    Op::Copy(i, write) if !grants.is_empty() => {
                        let (r, ro) = &grants[i % grants.len()];
                        let g = CopyPtr::Grant { dom: front.domid(), gref: r.raw() };
                        let l = CopyPtr::Local { gfn: bgfn };
                        let mut c = if write { [GrantCopy::new(l, 0, g, 0, 8)] } else { [GrantCopy::new(g, 0, l, 0, 8)] };
                        let res = copy_grants(&back, &mut c);
                        proptest::prop_assert_eq!(res.is_ok(), !(write && *ro));
                    }
                    Op::Poll => {
                        let mut n = 0;
                        t.poll_deferred(|_| n += 1);
                        let still: Vec<u32> = deferred
                            .iter()
                            .copied()
                            .filter(|d| maps.iter().any(|(g, _)| g == d))
                            .collect();
                        proptest::prop_assert_eq!(n, deferred.len() - still.len());
                        deferred = still;
                    }
                    _ => {}
                }
                for (r, _) in &grants {
                    let mapped = maps.iter().any(|(g, _)| *g == r.raw());
                    proptest::prop_assert_eq!(t.in_use(r), mapped);
                }
                proptest::prop_assert_eq!(back.mappings(), maps.len());
            }
            for (_, m) in maps.drain(..) {
                m.unmap(&back, &slots).unwrap();
            }
            let mut n = 0;
            t.poll_deferred(|_| n += 1);
            proptest::prop_assert_eq!(n, deferred.len());
            for (r, _) in grants {
                proptest::prop_assert_eq!(t.revoke(r), Revoke::Done);
            }
            proptest::prop_assert_eq!(t.stats().deferred_pending, 0);
        }
    }

    #[test]
    fn gntdev_ilp32_layout() {
        let (_sim, guest, dom0) = two_domains();
        let gt = table(&guest);
        let i = Abi::Ilp32;
        let mut dev = Gntdev::new(
            SimGntdev {
                hv: guest.clone(),
                table: &gt,
                slots: SimForeignMemory::new(&guest),
                sent: vec![],
                bound: 0,
            },
            Limits::default(),
        );
        let mut user = User::new();
        let f = dev.open();
        // struct ioctl_gntdev_alloc_gref on i386: domid, flags, count, index (4-aligned u64 at
        // 8), gref_ids (32-bit pointer at 16): 20 bytes.
        let mut a = vec![0u8; 20];
        a[0..2].copy_from_slice(&dom0.domid().to_le_bytes());
        a[2..4].copy_from_slice(&1u16.to_le_bytes());
        a[4..8].copy_from_slice(&3u32.to_le_bytes());
        a[16..20].copy_from_slice(&u32::try_from(BASE + 16).unwrap().to_le_bytes());
        dev.ioctl(f, i, i.alloc_gref(), &mut a, &mut user).unwrap();
        let index = u64_at(&a, 8);
        let ids: Vec<u32> = user.mem[16..28]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(ids.iter().all(|&r| r >= 8));
        // The 64-bit layout is refused for a 32-bit caller and vice versa.
        assert_eq!(
            dev.ioctl(f, i, Abi::Lp64.alloc_gref(), &mut [0; 24], &mut user),
            Err(Errno::ENOSYS)
        );
        let mut d = vec![0u8; 12];
        d[0..8].copy_from_slice(&index.to_le_bytes());
        d[8..12].copy_from_slice(&3u32.to_le_bytes());
        dev.ioctl(f, i, i.dealloc_gref(), &mut d, &mut user)
            .unwrap();
        assert_eq!(dev.stats().pages_allocated, 0);
    }

    // ---- events ----

    #[test]
    fn events_between_domains_set_shared_info_bits() {
        let (sim, front, back) = two_domains();
        let fport = alloc_unbound(&front, back.domid());
        assert_eq!(
            front.port_state(fport),
            PortState::Unbound {
                remote: back.domid()
            }
        );
        let bport = bind(&back, front.domid(), fport);
        // Binding marks the new local port pending (lost-notification fix-up, as Xen).
        assert!(pending(&back, bport));
        clear_pending(&back, bport);
        ack_upcall(&back);

        let hits = Arc::new(AtomicU32::new(0));
        let h2 = hits.clone();
        front.set_upcall_hook(move |vcpu| {
            assert_eq!(vcpu, 0);
            h2.fetch_add(1, Ordering::SeqCst);
        });
        send(&back, bport).unwrap();
        assert!(pending(&front, fport));
        assert!(upcall_pending(&front));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        // A second send while pending changes nothing.
        send(&back, bport).unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        assert_eq!(front.upcalls(), 1);
        // And the other way.
        send(&front, fport).unwrap();
        assert!(pending(&back, bport));

        // Masked: pending is set, no upcall; unmask delivers it.
        clear_pending(&front, fport);
        ack_upcall(&front);
        let si = front.shared_info();
        let mw = MASK + (fport as usize / 32) * 4;
        si.store_release_u32(mw, si.load_acquire_u32(mw).unwrap() | (1 << (fport % 32)))
            .unwrap();
        send(&back, bport).unwrap();
        assert!(pending(&front, fport));
        assert!(!upcall_pending(&front));
        front
            .event_channel_op(EventChannelOp::Unmask(&mut xabi::evtchn_unmask {
                port: fport,
            }))
            .unwrap();
        assert!(upcall_pending(&front));
        assert_eq!(hits.load(Ordering::SeqCst), 2);

        // Close: the other end becomes unbound and sends to it are dropped silently.
        front
            .event_channel_op(EventChannelOp::Close(&mut xabi::evtchn_close {
                port: fport,
            }))
            .unwrap();
        assert_eq!(
            back.port_state(bport),
            PortState::Unbound {
                remote: front.domid()
            }
        );
        assert!(send(&back, bport).is_ok());
        assert_eq!(send(&front, fport), Err(XenError::EINVAL));
        assert!(sim.stats().events_delivered >= 4);
    }

    #[test]
    fn event_faults_drop_delay_duplicate() {
        let (sim, front, back) = two_domains();
        let fport = alloc_unbound(&front, back.domid());
        let bport = bind(&back, front.domid(), fport);

        sim.inject_event_fault(EventFault {
            from: Some(back.domid()),
            to: None,
            port: None,
            action: EventAction::Drop,
            skip: 0,
            times: 1,
        });
        send(&back, bport).unwrap();
        assert!(!pending(&front, fport), "dropped");

        sim.inject_event_fault(EventFault {
            from: None,
            to: Some(front.domid()),
            port: Some(fport),
            action: EventAction::Delay(5),
            skip: 0,
            times: 1,
        });
        send(&back, bport).unwrap();
        assert!(!pending(&front, fport));
        assert_eq!(sim.queued_events(), 1);
        assert_eq!(sim.advance(4), 0);
        assert!(!pending(&front, fport));
        assert_eq!(sim.advance(1), 1);
        assert!(pending(&front, fport));

        clear_pending(&front, fport);
        sim.inject_event_fault(EventFault {
            from: None,
            to: None,
            port: None,
            action: EventAction::Duplicate,
            skip: 0,
            times: 1,
        });
        send(&back, bport).unwrap();
        assert!(pending(&front, fport));
        clear_pending(&front, fport);
        assert_eq!(sim.run_until_idle(), 1);
        assert!(pending(&front, fport), "delivered again");

        // A delayed event to a port that is closed meanwhile is discarded.
        sim.inject_event_fault(EventFault {
            from: None,
            to: None,
            port: None,
            action: EventAction::Delay(3),
            skip: 0,
            times: 1,
        });
        send(&back, bport).unwrap();
        front
            .event_channel_op(EventChannelOp::Close(&mut xabi::evtchn_close {
                port: fport,
            }))
            .unwrap();
        assert_eq!(sim.run_until_idle(), 0);
        let s = sim.stats();
        assert_eq!(
            (
                s.events_dropped,
                s.events_delayed,
                s.events_duplicated,
                s.events_stale
            ),
            (1, 2, 1, 1)
        );
    }

    #[test]
    fn seeded_chaos_replays_exactly() {
        fn run(seed: u64) -> (Vec<bool>, xen_tests::xensim::hypervisor::SimStats) {
            let sim = SimHypervisor::new(SimConfig {
                seed,
                event_latency: (0, 3),
                ..SimConfig::default()
            });
            let a = sim.create_domain(DomainConfig::guest()).unwrap();
            let b = sim.create_domain(DomainConfig::guest()).unwrap();
            sim.set_event_chaos(EventChaos {
                drop_ppm: 200_000,
                duplicate_ppm: 100_000,
                delay_ppm: 200_000,
                max_delay: 7,
            });
            let pa = alloc_unbound(&a, b.domid());
            let pb = bind(&b, a.domid(), pa);
            let mut seen = Vec::new();
            for _ in 0..200 {
                clear_pending(&a, pa);
                send(&b, pb).unwrap();
                sim.advance(2);
                seen.push(pending(&a, pa));
            }
            sim.run_until_idle();
            (seen, sim.stats())
        }
        let (s1, st1) = run(7);
        let (s2, st2) = run(7);
        assert_eq!(s1, s2);
        assert_eq!(st1, st2);
        assert!(st1.events_dropped > 0 && st1.events_duplicated > 0 && st1.events_delayed > 0);
        let (s3, _) = run(8);
        assert_ne!(s1, s3, "another seed, another schedule");
    }

    #[test]
    fn fifo_is_refused_and_virqs_ipis_work() {
        let (_sim, front, _back) = two_domains();
        let mut ic = xabi::evtchn_init_control::default();
        assert_eq!(
            front.event_channel_op(EventChannelOp::InitControl(&mut ic)),
            Err(XenError::ENOSYS)
        );
        let mut v = xabi::evtchn_bind_virq {
            virq: xabi::VIRQ_DOM_EXC,
            vcpu: 0,
            port: 0,
        };
        front
            .event_channel_op(EventChannelOp::BindVirq(&mut v))
            .unwrap();
        assert_eq!(
            front.event_channel_op(EventChannelOp::BindVirq(&mut v)),
            Err(XenError::EEXIST)
        );
        assert!(front.raise_virq(xabi::VIRQ_DOM_EXC, 0));
        assert!(pending(&front, v.port));
        let mut i = xabi::evtchn_bind_ipi { vcpu: 0, port: 0 };
        front
            .event_channel_op(EventChannelOp::BindIpi(&mut i))
            .unwrap();
        send(&front, i.port).unwrap();
        assert!(pending(&front, i.port));
        let mut st = xabi::evtchn_status {
            dom: 0x7ff0,
            port: v.port,
            ..unsafe_free_status()
        };
        front
            .event_channel_op(EventChannelOp::Status(&mut st))
            .unwrap();
        assert_eq!(st.status, xabi::EVTCHNSTAT_virq);
        // An unprivileged domain cannot allocate ports for others.
        let mut a = xabi::evtchn_alloc_unbound {
            dom: 0,
            remote_dom: 1,
            port: 0,
        };
        assert_eq!(
            front.event_channel_op(EventChannelOp::AllocUnbound(&mut a)),
            Err(XenError::EPERM)
        );
    }

    #[test]
    fn fifo_abi_when_supported() {
        use xen_tests::xensim::hypervisor::FifoSupport;
        const P: u32 = 1 << 31;
        const M: u32 = 1 << 30;
        const L: u32 = 1 << 29;
        let sim = SimHypervisor::new(SimConfig {
            fifo: FifoSupport::Supported,
            ..SimConfig::default()
        });
        let back = sim.create_domain(DomainConfig::dom0()).unwrap();
        let front = sim.create_domain(DomainConfig::guest()).unwrap();
        let cg = front.alloc_page().unwrap();
        let ag = front.alloc_page().unwrap();
        let mut ic = xabi::evtchn_init_control {
            control_gfn: cg,
            offset: 0,
            vcpu: 0,
            ..Default::default()
        };
        front
            .event_channel_op(EventChannelOp::InitControl(&mut ic))
            .unwrap();
        assert_eq!(ic.link_bits, 17);
        assert_eq!(
            front.event_channel_op(EventChannelOp::InitControl(&mut ic)),
            Err(XenError::EINVAL)
        );
        let mut ea = xabi::evtchn_expand_array { array_gfn: ag };
        front
            .event_channel_op(EventChannelOp::ExpandArray(&mut ea))
            .unwrap();
        let f1 = alloc_unbound(&front, back.domid());
        let f2 = alloc_unbound(&front, back.domid());
        let b1 = bind(&back, front.domid(), f1);
        let b2 = bind(&back, front.domid(), f2);
        let word = |p: u32| {
            front
                .page(ag)
                .unwrap()
                .load_acquire_u32(p as usize * 4)
                .unwrap()
        };
        let set_word = |p: u32, v: u32| {
            front
                .page(ag)
                .unwrap()
                .store_release_u32(p as usize * 4, v)
                .unwrap()
        };
        let cb = |off: usize| front.page(cg).unwrap().load_acquire_u32(off).unwrap();
        let head7 = || cb(8 + 7 * 4);

        send(&back, b1).unwrap();
        assert_eq!(word(f1) & (P | L), P | L);
        assert_eq!(head7(), f1);
        assert_eq!(cb(0), 1 << 7, "READY bit of the default priority");
        assert!(upcall_pending(&front));
        send(&back, b2).unwrap();
        assert_eq!(word(f1) & 0x1ffff, f2, "linked behind the tail");
        assert_eq!(word(f2) & (P | L), P | L);
        assert_eq!(head7(), f1);

        // The guest consumes both (as Linux's consume_one_event does).
        set_word(f1, 0);
        front
            .page(cg)
            .unwrap()
            .store_release_u32(8 + 7 * 4, f2)
            .unwrap();
        set_word(f2, 0);
        front
            .page(cg)
            .unwrap()
            .store_release_u32(8 + 7 * 4, 0)
            .unwrap();
        front.page(cg).unwrap().store_release_u32(0, 0).unwrap();
        ack_upcall(&front);
        // The old tail is no longer linked: the next event starts a new queue.
        send(&back, b1).unwrap();
        assert_eq!(head7(), f1);
        assert!(upcall_pending(&front));

        // Masked: pending but not linked, until unmasked.
        set_word(f2, M);
        send(&back, b2).unwrap();
        assert_eq!(word(f2), M | P);
        front
            .event_channel_op(EventChannelOp::Unmask(&mut xabi::evtchn_unmask {
                port: f2,
            }))
            .unwrap();
        assert_eq!(word(f2) & (M | P | L), P | L);
        assert_eq!(word(f1) & 0x1ffff, f2);
        let mut sp = xabi::evtchn_set_priority {
            port: f1,
            priority: 16,
        };
        assert_eq!(
            front.event_channel_op(EventChannelOp::SetPriority(&mut sp)),
            Err(XenError::EINVAL)
        );
        sp.priority = 2;
        front
            .event_channel_op(EventChannelOp::SetPriority(&mut sp))
            .unwrap();
        // A port beyond the event array is lost (counted), not a crash.
        let before = sim.stats().events_stale;
        let mut v = xabi::evtchn_bind_virq {
            virq: xabi::VIRQ_DOM_EXC,
            vcpu: 0,
            port: 0,
        };
        front
            .event_channel_op(EventChannelOp::BindVirq(&mut v))
            .unwrap();
        assert!(v.port < 1024);
        assert!(front.raise_virq(xabi::VIRQ_DOM_EXC, 0));
        assert_eq!(sim.stats().events_stale, before);
    }

    fn unsafe_free_status() -> xabi::evtchn_status {
        xabi::evtchn_status {
            dom: 0,
            __bindgen_padding_0: [0; 2],
            port: 0,
            status: 0,
            vcpu: 0,
            u: xabi::evtchn_status__bindgen_ty_1 { pirq: 0 },
        }
    }

    // ---- /dev/xen/gntdev ----

    /// The kernel services gntdev needs, over the simulator.
    struct SimGntdev<'a> {
        hv: DomainHandle,
        table: &'a Table<'a>,
        slots: SimForeignMemory<'a>,
        sent: Vec<u32>,
        bound: u32,
    }

    impl GntdevPlatform for SimGntdev<'_> {
        type Notify = u32;
        fn alloc_page(&mut self) -> Option<u64> {
            self.hv.alloc_page()
        }
        fn free_page(&mut self, gfn: u64) {
            self.hv.free_page(gfn);
        }
        fn grant(&mut self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
            self.table.grant(domid, gfn, readonly)
        }
        fn revoke(&mut self, r: GrantRef) -> Revoke {
            self.table.revoke(r)
        }
        fn map(
            &mut self,
            refs: &[(u16, u32)],
            readonly: bool,
        ) -> Result<ForeignMapping, MapRangeError> {
            ForeignMapping::map(&self.hv, &self.slots, refs, readonly)
        }
        fn unmap(&mut self, m: ForeignMapping) -> Result<(), ForeignMapping> {
            m.unmap(&self.hv, &self.slots).map_err(|(m, _)| m)
        }
        fn clear_byte_own(&mut self, gfn: u64, offset: usize) {
            self.hv.write(gfn, offset, &[0]).unwrap();
        }
        fn clear_byte_mapped(&mut self, m: &ForeignMapping, page: usize, offset: usize) {
            m.page(&self.slots, page)
                .unwrap()
                .write(offset, &[0])
                .unwrap();
        }
        fn bind_notify(&mut self, port: u32) -> Result<u32, Errno> {
            match self.hv.port_state(port) {
                PortState::Interdomain { .. } => {
                    self.bound += 1;
                    Ok(port)
                }
                _ => Err(Errno::EINVAL),
            }
        }
        fn notify(&mut self, port: &u32) {
            send(&self.hv, *port).unwrap();
            self.sent.push(*port);
        }
        fn unbind_notify(&mut self, _port: u32) {
            self.bound -= 1;
        }
    }

    /// A user process: memory at [BASE, BASE + len), and a VM map of gntdev objects.
    struct User {
        mem: Vec<u8>,
        vm: BTreeMap<u64, (ObjectId, u64)>,
    }
    const BASE: u64 = 0x7000_0000;

    impl User {
        fn new() -> Self {
            User {
                mem: vec![0; 64 * 1024],
                vm: BTreeMap::new(),
            }
        }
        fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
            let start = usize::try_from(addr.checked_sub(BASE).ok_or(Errno::EFAULT)?)
                .map_err(|_| Errno::EFAULT)?;
            let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
            if end > self.mem.len() {
                return Err(Errno::EFAULT);
            }
            Ok(start..end)
        }
    }

    impl UserContext for User {
        fn copyin(&mut self, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
            let r = self.range(addr, dst.len())?;
            dst.copy_from_slice(&self.mem[r]);
            Ok(())
        }
        fn copyout(&mut self, addr: u64, src: &[u8]) -> Result<(), Errno> {
            let r = self.range(addr, src.len())?;
            self.mem[r].copy_from_slice(src);
            Ok(())
        }
        fn lookup_vaddr(&mut self, vaddr: u64) -> Option<(ObjectId, u64)> {
            self.vm.get(&vaddr).copied()
        }
    }

    fn alloc_arg(domid: u16, flags: u16, count: u32, ids: u64) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[0..2].copy_from_slice(&domid.to_le_bytes());
        d[2..4].copy_from_slice(&flags.to_le_bytes());
        d[4..8].copy_from_slice(&count.to_le_bytes());
        d[16..24].copy_from_slice(&ids.to_le_bytes());
        d
    }
    fn map_arg(count: u32, refs: u64) -> Vec<u8> {
        let mut d = vec![0u8; 24];
        d[0..4].copy_from_slice(&count.to_le_bytes());
        d[16..24].copy_from_slice(&refs.to_le_bytes());
        d
    }
    fn index_count_arg(index: u64, count: u32) -> Vec<u8> {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&index.to_le_bytes());
        d[8..12].copy_from_slice(&count.to_le_bytes());
        d
    }
    fn notify_arg(index: u64, action: u32, port: u32) -> Vec<u8> {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&index.to_le_bytes());
        d[8..12].copy_from_slice(&action.to_le_bytes());
        d[12..16].copy_from_slice(&port.to_le_bytes());
        d
    }
    fn u64_at(d: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(d[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn gntdev_alloc_map_notify_end_to_end() {
        let (_sim, guest, dom0) = two_domains();
        let gt = table(&guest);
        let dt = table(&dom0);
        let l = Abi::Lp64;
        // The guest shares two pages with dom0 through its gntdev ("gntshr").
        let mut gdev = Gntdev::new(
            SimGntdev {
                hv: guest.clone(),
                table: &gt,
                slots: SimForeignMemory::new(&guest),
                sent: vec![],
                bound: 0,
            },
            Limits::default(),
        );
        let mut guser = User::new();
        let gf = gdev.open();
        let mut a = alloc_arg(dom0.domid(), abi::GNTDEV_ALLOC_FLAG_WRITABLE, 2, BASE);
        gdev.ioctl(gf, l, l.alloc_gref(), &mut a, &mut guser)
            .unwrap();
        let gindex = u64_at(&a, 8);
        let ids: Vec<u32> = guser.mem[..8]
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert!(ids.iter().all(|&r| r >= 8));
        let MmapTarget::Pages { object: gobj, gfns } = gdev.mmap(gf, gindex, 8192, true).unwrap()
        else {
            panic!("pages")
        };
        guest.write(gfns[1], 0, b"hello from the guest").unwrap();

        // Dom0 maps them through its own gntdev ("gnttab").
        let mut ddev = Gntdev::new(
            SimGntdev {
                hv: dom0.clone(),
                table: &dt,
                slots: SimForeignMemory::new(&dom0),
                sent: vec![],
                bound: 0,
            },
            Limits::default(),
        );
        let mut duser = User::new();
        let df = ddev.open();
        for (i, id) in ids.iter().enumerate() {
            duser.mem[i * 8..i * 8 + 4].copy_from_slice(&u32::from(guest.domid()).to_le_bytes());
            duser.mem[i * 8 + 4..i * 8 + 8].copy_from_slice(&id.to_le_bytes());
        }
        let mut m = map_arg(2, BASE);
        ddev.ioctl(df, l, l.map_grant_ref(), &mut m, &mut duser)
            .unwrap();
        let dindex = u64_at(&m, 8);
        assert_eq!(dom0.mappings(), 0, "the map hypercall waits for mmap");
        let MmapTarget::Mapped {
            object: dobj,
            host_addr,
            count,
            readonly,
        } = ddev.mmap(df, dindex, 8192, true).unwrap()
        else {
            panic!("mapped")
        };
        assert_eq!((count, readonly), (2, false));
        assert_eq!(dom0.mappings(), 2);
        assert_eq!(
            bytes(&dom0, host_addr / 4096 + 1, 0, 20),
            b"hello from the guest"
        );
        // GET_OFFSET_FOR_VADDR finds the mapping from its address.
        duser.vm.insert(0x5000_0000, (dobj, 8192));
        let mut v = vec![0u8; 24];
        v[0..8].copy_from_slice(&0x5000_0000u64.to_le_bytes());
        ddev.ioctl(df, l, l.get_offset_for_vaddr(), &mut v, &mut duser)
            .unwrap();
        assert_eq!(u64_at(&v, 8), dindex);
        assert_eq!(u32::from_le_bytes(v[16..20].try_into().unwrap()), 2);

        // Dom0 arms an unmap notification: clear byte 5 of page 1 and send an event.
        let gport = alloc_unbound(&guest, dom0.domid());
        let dport = bind(&dom0, guest.domid(), gport);
        clear_pending(&guest, gport);
        let mut n = notify_arg(
            dindex + 4096 + 5,
            abi::UNMAP_NOTIFY_CLEAR_BYTE | abi::UNMAP_NOTIFY_SEND_EVENT,
            dport,
        );
        ddev.ioctl(df, l, l.set_unmap_notify(), &mut n, &mut duser)
            .unwrap();
        // Unmap ioctl: nothing happens while still mmapped.
        let mut u = index_count_arg(dindex, 2);
        ddev.ioctl(df, l, l.unmap_grant_ref(), &mut u, &mut duser)
            .unwrap();
        assert_eq!(dom0.mappings(), 2);
        assert!(!pending(&guest, gport));
        // munmap: the notification fires, then the grants are unmapped.
        ddev.object_released(dobj);
        assert_eq!(dom0.mappings(), 0);
        assert!(pending(&guest, gport));
        assert_eq!(bytes(&guest, gfns[1], 0, 6), b"hello\0");
        assert_eq!(ddev.stats().notifications, 1);
        assert_eq!(ddev.platform().bound, 0);

        // The guest deallocates: pages are freed once munmapped.
        let mut dd = index_count_arg(gindex, 2);
        gdev.ioctl(gf, l, l.dealloc_gref(), &mut dd, &mut guser)
            .unwrap();
        assert_eq!(gdev.dying(), (2, 0));
        gdev.object_released(gobj);
        assert_eq!(gdev.dying(), (0, 0));
        assert_eq!(gdev.stats().pages_allocated, 0);
        assert_eq!(gt.stats().granted, gt.stats().revoked);
        gdev.close(gf);
        ddev.close(df);
    }

    #[test]
    fn gntdev_dealloc_while_peer_maps_defers_the_page() {
        let (_sim, guest, dom0) = two_domains();
        let gt = table(&guest);
        let l = Abi::Lp64;
        let mut gdev = Gntdev::new(
            SimGntdev {
                hv: guest.clone(),
                table: &gt,
                slots: SimForeignMemory::new(&guest),
                sent: vec![],
                bound: 0,
            },
            Limits::default(),
        );
        let mut user = User::new();
        let f = gdev.open();
        let mut a = alloc_arg(dom0.domid(), 0, 1, BASE);
        gdev.ioctl(f, l, l.alloc_gref(), &mut a, &mut user).unwrap();
        let gref = u32::from_le_bytes(user.mem[..4].try_into().unwrap());
        let slots = SimForeignMemory::new(&dom0);
        let m = ForeignMapping::map(&dom0, &slots, &[(guest.domid(), gref)], true).unwrap();
        // Closing the file deallocates; the peer still maps the page: deferred, not freed.
        gdev.close(f);
        assert_eq!(gdev.stats().deferred_revokes, 1);
        assert_eq!(gt.stats().deferred_pending, 1);
        m.unmap(&dom0, &slots).unwrap();
        let mut freed = vec![];
        gt.poll_deferred(|g| freed.push(g));
        assert_eq!(freed.len(), 1);
    }

    #[test]
    fn gntdev_rejects_malformed_ioctls_and_leaks_nothing() {
        let (_sim, guest, dom0) = two_domains();
        let gt = table(&guest);
        let free0 = gt.stats().free_refs;
        let l = Abi::Lp64;
        let mut dev = Gntdev::new(
            SimGntdev {
                hv: guest.clone(),
                table: &gt,
                slots: SimForeignMemory::new(&guest),
                sent: vec![],
                bound: 0,
            },
            Limits {
                max_pages_per_file: 64,
            },
        );
        let mut user = User::new();
        let f = dev.open();
        let d = dom0.domid();
        let cases: Vec<(u32, Vec<u8>, Errno)> = vec![
            (l.alloc_gref(), alloc_arg(d, 1, 0, BASE), Errno::EINVAL), // count 0
            (l.alloc_gref(), alloc_arg(d, 1, 65, BASE), Errno::EINVAL), // above the limit
            (l.alloc_gref(), alloc_arg(d, 0x8001, 1, BASE), Errno::EINVAL), // unknown flag
            (l.alloc_gref(), alloc_arg(0x7ff0, 1, 1, BASE), Errno::EINVAL), // DOMID_SELF
            (l.alloc_gref(), alloc_arg(d, 1, 4, 0x10), Errno::EFAULT), // bad gref_ids pointer
            (
                l.alloc_gref(),
                alloc_arg(d, 1, 2, BASE + 64 * 1024 - 4),
                Errno::EFAULT,
            ), // half fits
            (l.alloc_gref(), vec![0; 20], Errno::EINVAL),              // wrong size
            (Abi::Ilp32.alloc_gref(), vec![0; 20], Errno::ENOSYS),     // other ABI's number
            (0xdead_beef, vec![], Errno::ENOSYS),                      // unknown command
            (l.map_grant_ref(), map_arg(0, BASE), Errno::EINVAL),
            (l.map_grant_ref(), map_arg(u32::MAX, BASE), Errno::EINVAL),
            (l.map_grant_ref(), map_arg(2, 0x20), Errno::EFAULT),
            (l.dealloc_gref(), index_count_arg(0, 1), Errno::EINVAL),
            (l.dealloc_gref(), index_count_arg(1, 1), Errno::EINVAL),
            (l.unmap_grant_ref(), index_count_arg(0, 1), Errno::EINVAL),
            (l.set_unmap_notify(), notify_arg(0, 4, 0), Errno::EINVAL),
            (l.set_unmap_notify(), notify_arg(0, 1, 0), Errno::EINVAL),
            (l.get_offset_for_vaddr(), vec![0; 24], Errno::EINVAL),
        ];
        for (i, (cmd, mut data, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                dev.ioctl(f, l, cmd, &mut data, &mut user),
                Err(want),
                "case {i}"
            );
        }
        // Domid in a map request beyond u16's meaningful range.
        user.mem[..8].copy_from_slice(&[0xf0, 0x7f, 0, 0, 8, 0, 0, 0]);
        assert_eq!(
            dev.ioctl(f, l, l.map_grant_ref(), &mut map_arg(1, BASE), &mut user),
            Err(Errno::EINVAL)
        );
        // The per-file limit: 64 pages, then ENOSPC.
        let mut a = alloc_arg(d, 1, 60, BASE);
        dev.ioctl(f, l, l.alloc_gref(), &mut a, &mut user).unwrap();
        let index = u64_at(&a, 8);
        assert_eq!(
            dev.ioctl(
                f,
                l,
                l.alloc_gref(),
                &mut alloc_arg(d, 1, 5, BASE),
                &mut user
            ),
            Err(Errno::ENOSPC)
        );
        // Misuse of valid state: partial dealloc range, mmap of wrong size/offset.
        assert_eq!(
            dev.ioctl(
                f,
                l,
                l.dealloc_gref(),
                &mut index_count_arg(index, 61),
                &mut user
            ),
            Err(Errno::EINVAL)
        );
        assert_eq!(dev.mmap(f, index, 61 * 4096, true), Err(Errno::EINVAL));
        assert_eq!(dev.mmap(f, index + 1, 4096, true), Err(Errno::EINVAL));
        assert_eq!(dev.mmap(f, index, 100, true), Err(Errno::EINVAL));
        // A map whose grants are bogus fails at mmap, with nothing left mapped.
        user.mem[..8].copy_from_slice(&[1, 0, 0, 0, 0xff, 0xff, 0, 0]);
        let mut m = map_arg(1, BASE);
        let mut fresh = dev.open();
        dev.ioctl(fresh, l, l.map_grant_ref(), &mut m, &mut user)
            .unwrap();
        assert_eq!(
            dev.mmap(fresh, u64_at(&m, 8), 4096, false),
            Err(Errno::EINVAL)
        );
        assert_eq!(guest.mappings(), 0);
        dev.close(fresh);
        fresh = dev.open();
        let _ = fresh;
        // Everything given back: references and pages.
        assert_eq!(
            dev.ioctl(
                f,
                l,
                l.dealloc_gref(),
                &mut index_count_arg(index, 60),
                &mut user
            ),
            Ok(())
        );
        dev.close(f);
        assert_eq!(dev.stats().pages_allocated, 0);
        assert_eq!(gt.stats().free_refs, free0);
        assert_eq!(dev.dying(), (0, 0));
        assert_eq!(dev.platform().bound, 0);
    }
}
