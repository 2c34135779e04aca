//! `/dev/xen/privcmd` end to end: `xen_kmod::privcmd` driven through its FreeBSD ioctl entry
//! point in a simulated Dom0, mapping a simulated guest's frames (`xensim::foreign`), with
//! typed hypercall passthrough, restriction, and malformed arguments.

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use xen_kmod::privcmd::{
        abi::{self, Abi},
        Config, Errno, FileId, Privcmd, RegionId, UserContext,
    };
    use xen_sys::x86_64 as x;
    use xen_tests::xensim::foreign::{PrivDomain, SimPrivcmdPlatform, Source};
    use xen_tests::xensim::{DomainConfig, DomainHandle, SimConfig, SimHypervisor};

    const L: Abi = Abi::Lp64;

    /// A fake process: a sparse byte memory and the privcmd regions it has mmapped.
    #[derive(Default)]
    struct Proc {
        mem: BTreeMap<u64, u8>,
        maps: Vec<(u64, u64, RegionId)>,
    }

    impl Proc {
        fn poke(&mut self, addr: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                self.mem.insert(addr + i as u64, *b);
            }
        }
        fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
            (0..len as u64)
                .map(|i| *self.mem.get(&(addr + i)).unwrap_or(&0))
                .collect()
        }
        /// Valid user memory: [0x1000_0000, 0x2000_0000).
        fn ok(addr: u64, len: usize) -> bool {
            addr >= 0x1000_0000 && addr.saturating_add(len as u64) <= 0x2000_0000
        }
    }

    impl UserContext for Proc {
        fn copyin(&mut self, addr: u64, dst: &mut [u8]) -> Result<(), Errno> {
            if !Proc::ok(addr, dst.len()) {
                return Err(Errno::EFAULT);
            }
            dst.copy_from_slice(&self.peek(addr, dst.len()));
            Ok(())
        }
        fn copyout(&mut self, addr: u64, src: &[u8]) -> Result<(), Errno> {
            if !Proc::ok(addr, src.len()) {
                return Err(Errno::EFAULT);
            }
            self.poke(addr, src);
            Ok(())
        }
        fn lookup_vaddr(&mut self, vaddr: u64) -> Option<(RegionId, u64, u64)> {
            self.maps
                .iter()
                .find(|(s, l, _)| vaddr >= *s && vaddr < s + l)
                .map(|&(s, l, r)| (r, s, l))
        }
    }

    struct Rig {
        _sim: SimHypervisor,
        dom0: PrivDomain,
        domu: DomainHandle,
        dev: Privcmd<SimPrivcmdPlatform>,
        file: FileId,
        p: Proc,
    }

    fn rig() -> Rig {
        let sim = SimHypervisor::new(SimConfig::default());
        let d0 = sim.create_domain(DomainConfig::dom0()).unwrap();
        let domu = sim.create_domain(DomainConfig::guest()).unwrap();
        let dom0 = PrivDomain::new(d0.clone());
        let mut dev = Privcmd::new(SimPrivcmdPlatform::new(d0), Config::default());
        let file = dev.open();
        Rig {
            _sim: sim,
            dom0,
            domu,
            dev,
            file,
            p: Proc::default(),
        }
    }

    impl Rig {
        fn ioctl(&mut self, cmd: u32, data: &mut [u8]) -> Result<(), Errno> {
            self.dev
                .ioctl(&self.dom0, self.file, L, cmd, data, &mut self.p)
        }
        /// mmap(2) of `pages` at user address `va`.
        fn mmap(&mut self, va: u64, pages: u64) -> RegionId {
            let r = self.dev.mmap(pages * 4096).unwrap();
            self.p.maps.push((va, pages * 4096, r));
            r
        }
    }

    fn mmapbatch(num: i32, dom: u16, addr: u64, arr: u64, err: u64) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0..4].copy_from_slice(&num.to_le_bytes());
        d[4..6].copy_from_slice(&dom.to_le_bytes());
        d[8..16].copy_from_slice(&addr.to_le_bytes());
        d[16..24].copy_from_slice(&arr.to_le_bytes());
        d[24..32].copy_from_slice(&err.to_le_bytes());
        d
    }

    fn hypercall(op: u64, args: [u64; 5]) -> Vec<u8> {
        let mut d = vec![0u8; 56];
        d[0..8].copy_from_slice(&op.to_le_bytes());
        for (i, a) in args.iter().enumerate() {
            d[8 + 8 * i..16 + 8 * i].copy_from_slice(&a.to_le_bytes());
        }
        d
    }

    fn retval(d: &[u8]) -> u64 {
        u64::from_le_bytes(d[48..56].try_into().unwrap())
    }

    fn resource(dom: u16, ty: u32, id: u32, idx: u32, num: u64, addr: u64) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0..2].copy_from_slice(&dom.to_le_bytes());
        d[4..8].copy_from_slice(&ty.to_le_bytes());
        d[8..12].copy_from_slice(&id.to_le_bytes());
        d[12..16].copy_from_slice(&idx.to_le_bytes());
        d[16..24].copy_from_slice(&num.to_le_bytes());
        d[24..32].copy_from_slice(&addr.to_le_bytes());
        d
    }

    fn dmop(dom: u16, num: u32, ubufs: u64) -> Vec<u8> {
        let mut d = vec![0u8; 16];
        d[0..2].copy_from_slice(&dom.to_le_bytes());
        d[4..8].copy_from_slice(&num.to_le_bytes());
        d[8..16].copy_from_slice(&ubufs.to_le_bytes());
        d
    }

    const ARR: u64 = 0x1000_0000;
    const ERR: u64 = 0x1100_0000;
    const VA: u64 = 0x7000_0000;

    fn put_idxs(p: &mut Proc, idxs: &[u64]) {
        let b: Vec<u8> = idxs.iter().flat_map(|i| i.to_le_bytes()).collect();
        p.poke(ARR, &b);
    }

    fn errs(p: &Proc, n: usize) -> Vec<i32> {
        p.peek(ERR, 4 * n)
            .chunks(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn mmapbatch_maps_foreign_frames_with_per_entry_errors() {
        let mut r = rig();
        let u = r.domu.domid();
        r.domu.write(5, 0, b"guest page five").unwrap();
        r.domu.write(6, 100, b"six").unwrap();
        let region = r.mmap(VA, 3);
        put_idxs(&mut r.p, &[5, 6, 0xdead_beef]);
        let mut d = mmapbatch(3, u, VA, ARR, ERR);
        r.ioctl(L.mmapbatch(), &mut d).unwrap();
        assert_eq!(
            errs(&r.p, 3),
            [0, 0, 22],
            "unpopulated frame: EINVAL in err[2]"
        );
        let g0 = r.dev.fault(region, 0).unwrap();
        let g1 = r.dev.fault(region, 1).unwrap();
        assert_eq!(r.dev.fault(region, 2), None, "failed page faults");
        assert_eq!(r.dev.fault(region, 3), None);
        let mut buf = [0u8; 15];
        r.dom0.read_mapped(g0, 0, &mut buf).unwrap();
        assert_eq!(&buf, b"guest page five");
        // Writable: Dom0 writes land in the guest's frame.
        r.dom0.write_mapped(g1, 0, b"hi").unwrap();
        let mut b2 = [0u8; 2];
        r.domu.read(6, 0, &mut b2).unwrap();
        assert_eq!(&b2, b"hi");
        assert_eq!(r.dev.stats().mapped_frames, 2);
        assert_eq!(r.dev.stats().failed_entries, 1);
        // A region is filled once.
        assert_eq!(r.ioctl(L.mmapbatch(), &mut d), Err(Errno::EBUSY));
        // munmap: frames leave the physmap, the range goes back.
        r.dev.region_released(&r.dom0, region);
        assert!(r.dom0.mappings().is_empty());
        assert!(r.dev.platform().reserved.is_empty());
        assert_eq!(r.dev.regions(), 0);
        assert_eq!(r.dev.stats().mapped_frames, 0);
    }

    #[test]
    fn mmapbatch_malformed_arguments() {
        let mut r = rig();
        let u = r.domu.domid();
        let region = r.mmap(VA, 2);
        put_idxs(&mut r.p, &[1, 2]);
        let cases: Vec<(Vec<u8>, Errno)> = vec![
            (mmapbatch(0, u, VA, ARR, ERR), Errno::EINVAL),
            (mmapbatch(-1, u, VA, ARR, ERR), Errno::EINVAL),
            (mmapbatch(i32::MIN, u, VA, ARR, ERR), Errno::EINVAL),
            (mmapbatch(2, u, VA + 1, ARR, ERR), Errno::EINVAL), // unaligned
            (mmapbatch(1, u, VA, ARR, ERR), Errno::EINVAL),     // not the whole entry
            (mmapbatch(3, u, VA, ARR, ERR), Errno::EINVAL),     // past the entry
            (mmapbatch(2, u, VA + 4096, ARR, ERR), Errno::EINVAL), // not the entry start
            (mmapbatch(2, u, 0x9000_0000, ARR, ERR), Errno::EINVAL), // not a privcmd map
            (mmapbatch(2, 0x7ff0, VA, ARR, ERR), Errno::EINVAL), // reserved domid
            (mmapbatch(2, 0x7ff4, VA, ARR, ERR), Errno::EINVAL), // DOMID_INVALID
            (mmapbatch(2, 0, VA, ARR, ERR), Errno::EINVAL),     // ourselves
            (mmapbatch(2, 77, VA, ARR, ERR), Errno::ESRCH),     // no such domain
            (mmapbatch(2, u, VA, 0x10, ERR), Errno::EFAULT),    // bad arr
            (mmapbatch(2, u, VA, u64::MAX - 3, ERR), Errno::EFAULT),
            (mmapbatch(2, u, VA, ARR, 0x10), Errno::EFAULT), // bad err: unwound
        ];
        for (mut d, want) in cases {
            assert_eq!(r.ioctl(L.mmapbatch(), &mut d), Err(want), "{d:?}");
            assert!(r.dom0.mappings().is_empty(), "nothing stays mapped");
            assert_eq!(r.dev.fault(region, 0), None);
        }
        assert!(r.dev.stats().unwound_frames >= 2);
        // Wrong argument size, unknown command, the i386 command on the amd64 ABI.
        let mut short = vec![0u8; 31];
        assert_eq!(r.ioctl(L.mmapbatch(), &mut short), Err(Errno::EINVAL));
        assert_eq!(r.ioctl(0xc020_45ff, &mut [0u8; 32]), Err(Errno::ENOSYS));
        assert_eq!(
            r.ioctl(Abi::Ilp32.mmapbatch(), &mut [0u8; 20]),
            Err(Errno::ENOSYS)
        );
        // A closed file.
        let f = r.file;
        r.dev.close(f);
        assert_eq!(r.ioctl(L.restrict(), &mut [1, 0]), Err(Errno::EINVAL));
        // The region still works after all that, for a new file.
        r.file = r.dev.open();
        let mut ok = mmapbatch(2, u, VA, ARR, ERR);
        r.ioctl(L.mmapbatch(), &mut ok).unwrap();
        assert_eq!(errs(&r.p, 2), [0, 0]);
        // An unprivileged domain may not map others' frames: EPERM for the call.
        let sim = r.domu.sim().clone();
        let v = sim.create_domain(DomainConfig::guest()).unwrap();
        let pv = PrivDomain::new(v.clone());
        let mut dev = Privcmd::new(
            SimPrivcmdPlatform::new(v.clone()),
            Config {
                control_domain: false,
                own_domid: v.domid(),
                ..Config::default()
            },
        );
        let file = dev.open();
        let reg = dev.mmap(4096).unwrap();
        let mut p = Proc::default();
        p.maps.push((VA, 4096, reg));
        p.poke(ARR, &1u64.to_le_bytes());
        let mut d = mmapbatch(1, u, VA, ARR, ERR);
        assert_eq!(
            dev.ioctl(&pv, file, L, L.mmapbatch(), &mut d, &mut p),
            Err(Errno::EPERM)
        );
        // ... nor issue hypercalls.
        let mut h = hypercall(u64::from(x::__HYPERVISOR_xen_version), [0; 5]);
        assert_eq!(
            dev.ioctl(&pv, file, L, L.hypercall(), &mut h, &mut p),
            Err(Errno::EPERM)
        );
    }

    #[test]
    fn restrict_limits_the_file_to_one_domain() {
        let mut r = rig();
        let u = r.domu.domid();
        r.mmap(VA, 1);
        put_idxs(&mut r.p, &[1]);
        let ud = u.to_le_bytes();
        r.ioctl(L.restrict(), &mut ud.clone()).unwrap();
        assert_eq!(r.dev.restriction(r.file), Some(u));
        // Same domain again: fine; another: EINVAL; reserved: EINVAL.
        r.ioctl(L.restrict(), &mut ud.clone()).unwrap();
        assert_eq!(r.ioctl(L.restrict(), &mut [9, 0]), Err(Errno::EINVAL));
        assert_eq!(
            r.ioctl(L.restrict(), &mut 0x7ff4u16.to_le_bytes()),
            Err(Errno::EINVAL)
        );
        // Hypercalls are refused on a restricted file; other domids too.
        let mut h = hypercall(u64::from(x::__HYPERVISOR_xen_version), [0; 5]);
        assert_eq!(r.ioctl(L.hypercall(), &mut h), Err(Errno::EPERM));
        let mut d = mmapbatch(1, u + 1, VA, ARR, ERR);
        assert_eq!(r.ioctl(L.mmapbatch(), &mut d), Err(Errno::EPERM));
        assert_eq!(
            r.ioctl(L.mmap_resource(), &mut resource(u + 1, 1, 0, 0, 0, 0)),
            Err(Errno::EPERM)
        );
        assert_eq!(
            r.ioctl(L.dm_op(), &mut dmop(u + 1, 1, ARR)),
            Err(Errno::EPERM)
        );
        // The restricted domain still works.
        let mut d = mmapbatch(1, u, VA, ARR, ERR);
        r.ioctl(L.mmapbatch(), &mut d).unwrap();
        // Another open file is unrestricted.
        let other = r.dev.open();
        assert_eq!(r.dev.restriction(other), None);
    }

    #[test]
    fn hypercalls_are_decoded_into_typed_calls() {
        let mut r = rig();
        let u = r.domu.domid();
        // xen_version(XENVER_version): retval.
        let mut h = hypercall(u64::from(x::__HYPERVISOR_xen_version), [0; 5]);
        r.ioctl(L.hypercall(), &mut h).unwrap();
        assert!(retval(&h) > 0);
        // xen_version(XENVER_extraversion, buf): copied out.
        let mut h = hypercall(
            u64::from(x::__HYPERVISOR_xen_version),
            [u64::from(x::XENVER_extraversion), ARR, 0, 0, 0],
        );
        r.ioctl(L.hypercall(), &mut h).unwrap();
        assert_eq!(r.p.peek(ARR, 16).len(), 16);
        // ... to a bad buffer: EFAULT, retval 0.
        let mut h = hypercall(
            u64::from(x::__HYPERVISOR_xen_version),
            [u64::from(x::XENVER_capabilities), 0x42, 0, 0, 0],
        );
        assert_eq!(r.ioctl(L.hypercall(), &mut h), Err(Errno::EFAULT));
        assert_eq!(retval(&h), 0);
        // memory_op(XENMEM_current_reservation, &domid).
        r.p.poke(ARR, &u.to_le_bytes());
        let mut h = hypercall(
            u64::from(x::__HYPERVISOR_memory_op),
            [u64::from(x::XENMEM_current_reservation), ARR, 0, 0, 0],
        );
        r.ioctl(L.hypercall(), &mut h).unwrap();
        assert_eq!(retval(&h), 256);
        // event_channel_op(EVTCHNOP_alloc_unbound) in the guest for dom0, as libxl does.
        let mut a = Vec::new();
        a.extend_from_slice(&u.to_le_bytes());
        a.extend_from_slice(&0u16.to_le_bytes());
        a.extend_from_slice(&0u32.to_le_bytes());
        r.p.poke(ARR, &a);
        let mut h = hypercall(
            u64::from(x::__HYPERVISOR_event_channel_op),
            [u64::from(x::EVTCHNOP_alloc_unbound), ARR, 0, 0, 0],
        );
        r.ioctl(L.hypercall(), &mut h).unwrap();
        let port = u32::from_le_bytes(r.p.peek(ARR + 4, 4).try_into().unwrap());
        assert!(port > 0);
        // ... but not in our own domain (the kernel owns its ports).
        r.p.poke(ARR, &0x7ff0u16.to_le_bytes());
        assert_eq!(r.ioctl(L.hypercall(), &mut h), Err(Errno::EPERM));
        // hvm_op get_param of the guest.
        let mut hp = vec![0u8; 16];
        hp[0..2].copy_from_slice(&u.to_le_bytes());
        hp[4..8].copy_from_slice(&x::HVM_PARAM_STORE_EVTCHN.to_le_bytes());
        r.domu.set_hvm_param(x::HVM_PARAM_STORE_EVTCHN, 7);
        r.p.poke(ARR, &hp);
        let mut h = hypercall(
            u64::from(x::__HYPERVISOR_hvm_op),
            [u64::from(x::HVMOP_get_param), ARR, 0, 0, 0],
        );
        r.ioctl(L.hypercall(), &mut h).unwrap();
        assert_eq!(
            u64::from_le_bytes(r.p.peek(ARR + 8, 8).try_into().unwrap()),
            7
        );
        // Refused: the kernel's own state; beyond the hypercall page; untyped ops (the sim
        // offers no raw passthrough); an unknown xen_version sub-op; Xen's own error.
        let refused: Vec<(u64, [u64; 5], Errno)> = vec![
            (
                u64::from(x::__HYPERVISOR_sched_op),
                [2, ARR, 0, 0, 0],
                Errno::EPERM,
            ),
            (
                u64::from(x::__HYPERVISOR_grant_table_op),
                [0; 5],
                Errno::EPERM,
            ),
            (u64::from(x::__HYPERVISOR_vcpu_op), [0; 5], Errno::EPERM),
            (u64::from(x::__HYPERVISOR_console_io), [0; 5], Errno::EPERM),
            (128, [0; 5], Errno::EINVAL),
            (u64::MAX, [0; 5], Errno::EINVAL),
            (
                u64::from(x::__HYPERVISOR_domctl),
                [ARR, 0, 0, 0, 0],
                Errno::ENOSYS,
            ),
            (
                u64::from(x::__HYPERVISOR_sysctl),
                [ARR, 0, 0, 0, 0],
                Errno::ENOSYS,
            ),
            (
                u64::from(x::__HYPERVISOR_xen_version),
                [99, 0, 0, 0, 0],
                Errno::ENOSYS,
            ),
            (
                u64::from(x::__HYPERVISOR_memory_op),
                [u64::from(x::XENMEM_current_reservation), 0x5, 0, 0, 0],
                Errno::EFAULT,
            ),
        ];
        for (op, args, want) in refused {
            let mut h = hypercall(op, args);
            assert_eq!(r.ioctl(L.hypercall(), &mut h), Err(want), "op {op}");
            assert_eq!(retval(&h), 0);
        }
        // A missing domain: Xen's ESRCH, translated.
        r.p.poke(ARR, &77u16.to_le_bytes());
        let mut h = hypercall(
            u64::from(x::__HYPERVISOR_memory_op),
            [u64::from(x::XENMEM_current_reservation), ARR, 0, 0, 0],
        );
        assert_eq!(r.ioctl(L.hypercall(), &mut h), Err(Errno::ESRCH));
        // Wrong size.
        assert_eq!(r.ioctl(L.hypercall(), &mut [0u8; 28]), Err(Errno::EINVAL));
    }

    #[test]
    fn mmap_resource_maps_a_guest_grant_table() {
        let mut r = rig();
        let u = r.domu.domid();
        let gt = x::XENMEM_resource_grant_table;
        // Size query: num = addr = 0.
        let mut q = resource(u, gt, 0, 0, 0, 0);
        r.ioctl(L.mmap_resource(), &mut q).unwrap();
        let size = u64::from_le_bytes(q[16..24].try_into().unwrap());
        assert_eq!(size, u64::from(r.domu.grant_table_size().1));
        // Map frames 0..2 of it and see the guest's grant frame contents.
        r.domu.grant_frames()[1].0[0].store(0x1234_5678, std::sync::atomic::Ordering::SeqCst);
        let region = r.mmap(VA, 2);
        let mut m = resource(u, gt, 0, 0, 2, VA);
        r.ioctl(L.mmap_resource(), &mut m).unwrap();
        let g1 = r.dev.fault(region, 1).unwrap();
        let mut b = [0u8; 4];
        r.dom0.read_mapped(g1, 0, &mut b).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
        assert!(matches!(
            r.dom0.mappings().get(&g1),
            Some(Source::GrantFrame { idx: 1, .. })
        ));
        r.dev.region_released(&r.dom0, region);
        assert!(r.dom0.mappings().is_empty());
        // Malformed / unsupported.
        let region = r.mmap(VA + 0x10_0000, 1);
        let at = VA + 0x10_0000;
        let cases: Vec<(Vec<u8>, Errno)> = vec![
            (
                resource(u, x::XENMEM_resource_ioreq_server, 0, 0, 0, 0),
                Errno::EOPNOTSUPP,
            ),
            (resource(u, gt, 0, 0, 0, at), Errno::EINVAL), // num 0 with an address
            (resource(u, gt, 0, 0, 1, at + 8), Errno::EINVAL), // unaligned
            (resource(u, gt, 0, 0, 2, at), Errno::EINVAL), // longer than the region
            (resource(u, gt, 0, u32::MAX, 1, at), Errno::EINVAL), // past the table
            (resource(u, 1 << 20, 0, 0, 1, at), Errno::EINVAL), // type beyond u16
            (resource(0x7ff0, gt, 0, 0, 0, 0), Errno::EINVAL),
            (resource(77, gt, 0, 0, 0, 0), Errno::ESRCH),
        ];
        for (mut d, want) in cases {
            assert_eq!(r.ioctl(L.mmap_resource(), &mut d), Err(want), "{d:?}");
        }
        assert_eq!(r.dev.fault(region, 0), None);
        assert!(r.dom0.mappings().is_empty());
    }

    #[test]
    fn dm_op_validates_then_reaches_the_hypervisor() {
        let mut r = rig();
        let u = r.domu.domid();
        let buf = |uptr: u64, size: u64| {
            let mut v = uptr.to_le_bytes().to_vec();
            v.extend_from_slice(&size.to_le_bytes());
            v
        };
        // num 0: nothing to do.
        r.ioctl(L.dm_op(), &mut dmop(u, 0, 0)).unwrap();
        assert_eq!(r.ioctl(L.dm_op(), &mut dmop(u, 17, ARR)), Err(Errno::E2BIG));
        assert_eq!(
            r.ioctl(L.dm_op(), &mut dmop(u, 1, 0x10)),
            Err(Errno::EFAULT)
        );
        r.p.poke(ARR, &buf(0x1200_0000, 4097));
        assert_eq!(r.ioctl(L.dm_op(), &mut dmop(u, 1, ARR)), Err(Errno::E2BIG));
        r.p.poke(ARR, &buf(0x10, 16));
        assert_eq!(r.ioctl(L.dm_op(), &mut dmop(u, 1, ARR)), Err(Errno::EFAULT));
        assert_eq!(
            r.ioctl(L.dm_op(), &mut dmop(0x7ff4, 1, ARR)),
            Err(Errno::EINVAL)
        );
        // Well-formed: the simulator has no device model, so Xen's ENOSYS (FreeBSD's 78).
        r.p.poke(ARR, &buf(0x1200_0000, 16));
        assert_eq!(r.ioctl(L.dm_op(), &mut dmop(u, 1, ARR)), Err(Errno::ENOSYS));
    }

    #[test]
    fn random_ioctls_never_panic() {
        let mut r = rig();
        r.mmap(VA, 4);
        let cmds = [
            L.hypercall(),
            L.mmapbatch(),
            L.mmap_resource(),
            L.dm_op(),
            L.restrict(),
            0,
            u32::MAX,
        ];
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..5000 {
            let cmd = cmds[usize::try_from(next()).unwrap_or(0) % cmds.len()];
            let len = if next() % 8 == 0 {
                (next() % 64) as usize
            } else {
                abi::iocparm_len(cmd)
            };
            let mut d: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            // Steer some fields towards interesting values.
            if len >= 32 && next() % 2 == 0 {
                d[8..16].copy_from_slice(&VA.to_le_bytes());
                d[16..24].copy_from_slice(&ARR.to_le_bytes());
                d[24..32].copy_from_slice(&ERR.to_le_bytes());
                d[4..6].copy_from_slice(&r.domu.domid().to_le_bytes());
            }
            let _ = r.ioctl(cmd, &mut d);
            if next() % 50 == 0 {
                let f = r.file;
                r.dev.close(f);
                r.file = r.dev.open();
            }
        }
    }
}
