//! Event channels end to end: `xen-evtchn` in simulated domains over `xensim`.
//!
//! Each domain runs its own `EventChannels` core over its `DomainHandle` (the simulator's
//! implementation of `xen_kmod::Hypervisor`) and its simulated `shared_info`. The simulator
//! refuses the FIFO ABI (as QEMU's Xen emulation does), so every core here exercises the
//! fallback to 2-level. Covered: inter-domain channels both ways, VIRQs, IPIs between vCPUs,
//! a flooding peer throttled without losing its last event, injected event faults, a peer
//! dying, and `/dev/xen/evtchn` driven through its FreeBSD ioctl entry points.

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use xen_evtchn::dev::{self, Errno, EvtchnFile};
    use xen_evtchn::{
        Abi, AbiChoice, BindOptions, Config, Error, Event, EventChannels, PageSource, Port,
        ThrottleConfig,
    };
    use xen_kmod::shared::SharedInfo;
    use xen_kmod::{XenError, DOMID_SELF};
    use xen_shmem::SharedMem;
    use xen_sys::consts::Virq;
    use xen_tests::xensim::events::PortState;
    use xen_tests::xensim::faults::{EventAction, EventFault};
    use xen_tests::xensim::{DomainConfig, DomainHandle, SimConfig, SimHypervisor};

    /// Guest pages from the simulated domain's RAM (for FIFO control blocks and arrays).
    struct SimPages<'a>(&'a DomainHandle);

    impl<'a> PageSource<'a> for SimPages<'a> {
        fn alloc_page(&mut self) -> Result<(SharedMem<'a>, u64), Error> {
            let gfn = self.0.alloc_page().ok_or(Error::NoMemory)?;
            let page = self.0.page(gfn).ok_or(Error::NoMemory)?;
            Ok((page, gfn))
        }
    }

    type Ec<'a> = EventChannels<'a, &'a DomainHandle, SimPages<'a>>;

    fn core<'a>(dom: &'a DomainHandle, vcpus: u32, throttle: ThrottleConfig) -> Ec<'a> {
        let shared = SharedInfo::new(dom.shared_info()).unwrap();
        let vcpu0 = shared.legacy_vcpu_info(0).unwrap();
        let cfg = Config {
            abi: AbiChoice::PreferFifo,
            max_vcpus: vcpus,
            throttle,
            ..Config::default()
        };
        let mut ec = EventChannels::new(dom, SimPages(dom), shared, vcpu0, cfg).unwrap();
        for v in 1..vcpus {
            ec.add_vcpu(v, shared.legacy_vcpu_info(v).unwrap()).unwrap();
        }
        ec
    }

    fn poll(ec: &mut Ec<'_>, vcpu: u32, now: u64) -> Vec<Event> {
        let mut out = [Event::default(); 64];
        let r = ec.poll(vcpu, now, &mut out).unwrap();
        out[..r.delivered].to_vec()
    }

    fn pair() -> (SimHypervisor, DomainHandle, DomainHandle) {
        let sim = SimHypervisor::new(SimConfig::default());
        let dom0 = sim.create_domain(DomainConfig::dom0()).unwrap();
        let guest = sim
            .create_domain(DomainConfig {
                vcpus: 2,
                ..DomainConfig::guest()
            })
            .unwrap();
        (sim, dom0, guest)
    }

    /// dom0 offers a port to the guest, the guest connects: (dom0's port, guest's port).
    fn connect(back: &mut Ec<'_>, front: &mut Ec<'_>, backid: u16, frontid: u16) -> (Port, Port) {
        let bp = back.alloc_unbound(frontid, BindOptions::new(1)).unwrap();
        let fp = front
            .bind_interdomain(backid, bp, BindOptions::new(2))
            .unwrap();
        (bp, fp)
    }

    #[test]
    fn fifo_refused_by_the_simulator_falls_back_to_two_level() {
        let (_sim, dom0, _guest) = pair();
        let ec = core(&dom0, 1, ThrottleConfig::default());
        assert_eq!(ec.abi(), Abi::TwoLevel);
        assert_eq!(ec.fifo_refused(), Some(XenError::ENOSYS));
    }

    /// The FIFO ABI end to end: both domains negotiate it with a simulator that offers it,
    /// events cross both ways on vCPU 0 and 1, and a masked port holds its event until unmasked.
    #[test]
    fn fifo_abi_when_the_simulator_offers_it() {
        let sim = SimHypervisor::new(SimConfig {
            fifo: xen_tests::xensim::hypervisor::FifoSupport::Supported,
            ..SimConfig::default()
        });
        let dom0 = sim.create_domain(DomainConfig::dom0()).unwrap();
        let guest = sim
            .create_domain(DomainConfig {
                vcpus: 2,
                ..DomainConfig::guest()
            })
            .unwrap();
        let mut back = core(&dom0, 1, ThrottleConfig::default());
        let mut front = core(&guest, 2, ThrottleConfig::default());
        assert_eq!(back.abi(), Abi::Fifo);
        assert_eq!(front.abi(), Abi::Fifo);
        assert_eq!(front.fifo_refused(), None);
        let (bp, fp) = connect(&mut back, &mut front, dom0.domid(), guest.domid());
        for round in 0..5u64 {
            front.notify(fp).unwrap();
            sim.run_until_idle();
            assert_eq!(poll(&mut back, 0, round), [Event { port: bp, token: 1 }]);
            assert!(poll(&mut back, 0, round).is_empty(), "delivered once");
            back.notify(bp).unwrap();
            sim.run_until_idle();
            assert_eq!(poll(&mut front, 0, round), [Event { port: fp, token: 2 }]);
        }
        front.bind_vcpu(fp, 1).unwrap();
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert!(poll(&mut front, 0, 10).is_empty());
        assert_eq!(poll(&mut front, 1, 10), [Event { port: fp, token: 2 }]);
        // Masked: the event waits in the port, and unmasking delivers it.
        front.mask(fp).unwrap();
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert!(poll(&mut front, 1, 20).is_empty(), "masked port delivered");
        front.unmask(fp).unwrap();
        sim.run_until_idle();
        assert_eq!(poll(&mut front, 1, 21), [Event { port: fp, token: 2 }]);
    }

    #[test]
    fn two_domains_exchange_events_both_ways() {
        let (sim, dom0, guest) = pair();
        let upcalls = Arc::new(AtomicU64::new(0));
        let u = upcalls.clone();
        guest.set_upcall_hook(move |_vcpu| {
            u.fetch_add(1, Ordering::SeqCst);
        });
        let mut back = core(&dom0, 1, ThrottleConfig::default());
        let mut front = core(&guest, 2, ThrottleConfig::default());
        let (bp, fp) = connect(&mut back, &mut front, dom0.domid(), guest.domid());
        assert_eq!(
            dom0.port_state(bp),
            PortState::Interdomain {
                remote: guest.domid(),
                port: fp
            }
        );
        for round in 0..10u64 {
            front.notify(fp).unwrap();
            sim.run_until_idle();
            assert_eq!(poll(&mut back, 0, round), [Event { port: bp, token: 1 }]);
            assert!(poll(&mut back, 0, round).is_empty(), "delivered once");
            back.notify(bp).unwrap();
            sim.run_until_idle();
            assert_eq!(poll(&mut front, 0, round), [Event { port: fp, token: 2 }]);
        }
        assert!(
            upcalls.load(Ordering::SeqCst) >= 10,
            "the guest was interrupted"
        );
        // Moving the guest's port to vCPU 1 moves its upcalls there.
        front.bind_vcpu(fp, 1).unwrap();
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert!(poll(&mut front, 0, 100).is_empty());
        assert_eq!(poll(&mut front, 1, 100).len(), 1);
        // Close on one side: the other's sends are dropped, nothing is delivered any more.
        front.close(fp).unwrap();
        assert_eq!(
            dom0.port_state(bp),
            PortState::Unbound {
                remote: guest.domid()
            }
        );
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert!(poll(&mut front, 0, 200).is_empty() && poll(&mut front, 1, 200).is_empty());
    }

    #[test]
    fn virq_and_ipi() {
        let (sim, _dom0, guest) = pair();
        let mut ec = core(&guest, 2, ThrottleConfig::default());
        let timer = ec.bind_virq(Virq::Timer, 1, BindOptions::new(7)).unwrap();
        assert_eq!(
            guest.port_state(timer),
            PortState::Virq(Virq::Timer.value())
        );
        assert!(guest.raise_virq(Virq::Timer.value(), 1));
        sim.run_until_idle();
        assert!(poll(&mut ec, 0, 0).is_empty());
        assert_eq!(
            poll(&mut ec, 1, 0),
            [Event {
                port: timer,
                token: 7
            }]
        );
        // VIRQ_TIMER cannot be bound twice on the same vCPU.
        assert_eq!(
            ec.bind_virq(Virq::Timer, 1, BindOptions::new(8)),
            Err(Error::Xen(XenError::EEXIST))
        );
        // An IPI from vCPU 0 to vCPU 1.
        let ipi = ec.bind_ipi(1, BindOptions::new(9)).unwrap();
        ec.notify(ipi).unwrap();
        sim.run_until_idle();
        assert_eq!(
            poll(&mut ec, 1, 0),
            [Event {
                port: ipi,
                token: 9
            }]
        );
        // Xen refuses to move an IPI; the core reports it and the port still works.
        assert_eq!(ec.bind_vcpu(ipi, 0), Err(Error::Xen(XenError::EINVAL)));
        ec.notify(ipi).unwrap();
        sim.run_until_idle();
        assert_eq!(poll(&mut ec, 1, 0).len(), 1);
    }

    #[test]
    fn a_flooding_peer_is_throttled_and_nothing_is_lost() {
        let (sim, dom0, guest) = pair();
        let throttle = ThrottleConfig {
            window_ns: 1_000,
            max_per_window: 8,
            defer_ns: 5_000,
        };
        let mut back = core(&dom0, 1, throttle);
        let mut front = core(&guest, 1, throttle);
        let (bp, fp) = connect(&mut back, &mut front, dom0.domid(), guest.domid());
        let mut delivered = 0;
        // The backend (the hostile peer) notifies 1000 times; the frontend polls as it can.
        for _ in 0..1000 {
            back.notify(bp).unwrap();
            sim.run_until_idle();
            delivered += poll(&mut front, 0, 100).len();
        }
        assert_eq!(
            delivered, 9,
            "8 per window plus the one that tripped the throttle"
        );
        assert!(front.is_throttled(fp));
        assert_eq!(front.port_stats(fp).unwrap().throttled, 1);
        assert_eq!(front.stats().throttled, 1);
        assert_eq!(front.next_deadline(), Some(5_100));
        // While throttled, the port is masked at Xen: the simulator raises no upcall for it.
        let before = guest.upcalls();
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert_eq!(guest.upcalls(), before);
        // After the deferral the pending notification arrives: delayed, not dropped.
        assert_eq!(front.tick(5_100), 1);
        assert_eq!(poll(&mut front, 0, 5_100), [Event { port: fp, token: 2 }]);
        // And the channel works normally afterwards.
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert_eq!(poll(&mut front, 0, 20_000).len(), 1);
    }

    #[test]
    fn injected_event_faults() {
        let (sim, dom0, guest) = pair();
        let mut back = core(&dom0, 1, ThrottleConfig::default());
        let mut front = core(&guest, 1, ThrottleConfig::default());
        let (bp, fp) = connect(&mut back, &mut front, dom0.domid(), guest.domid());
        // Duplicated: both copies coalesce into one pending event (edge semantics).
        sim.inject_event_fault(EventFault {
            from: Some(dom0.domid()),
            to: None,
            port: None,
            action: EventAction::Duplicate,
            skip: 0,
            times: 1,
        });
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert_eq!(poll(&mut front, 0, 0).len(), 1);
        // Delayed: nothing until the simulated clock reaches it.
        sim.inject_event_fault(EventFault {
            from: Some(dom0.domid()),
            to: None,
            port: None,
            action: EventAction::Delay(50),
            skip: 0,
            times: 1,
        });
        back.notify(bp).unwrap();
        sim.advance(10);
        assert!(poll(&mut front, 0, 0).is_empty());
        sim.advance(100);
        assert_eq!(poll(&mut front, 0, 0), [Event { port: fp, token: 2 }]);
        // Dropped: lost at the hypervisor; the next notification still gets through.
        sim.inject_event_fault(EventFault {
            from: Some(dom0.domid()),
            to: None,
            port: None,
            action: EventAction::Drop,
            skip: 0,
            times: 1,
        });
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert!(poll(&mut front, 0, 0).is_empty());
        back.notify(bp).unwrap();
        sim.run_until_idle();
        assert_eq!(poll(&mut front, 0, 0).len(), 1);
    }

    #[test]
    fn a_dying_peer_is_noticed_and_the_channel_fails_cleanly() {
        let (sim, dom0, guest) = pair();
        let mut back = core(&dom0, 1, ThrottleConfig::default());
        let mut front = core(&guest, 1, ThrottleConfig::default());
        let (bp, _fp) = connect(&mut back, &mut front, dom0.domid(), guest.domid());
        assert!(sim.destroy_domain(guest.domid()));
        sim.run_until_idle();
        // The simulator marks the survivor's port pending so it notices the death.
        assert_eq!(poll(&mut back, 0, 0), [Event { port: bp, token: 1 }]);
        assert_eq!(
            dom0.port_state(bp),
            PortState::Unbound {
                remote: guest.domid()
            }
        );
        // Sending on the now unbound port is silently dropped, as on Xen; closing works.
        back.notify(bp).unwrap();
        back.close(bp).unwrap();
        assert_eq!(dom0.port_state(bp), PortState::Free);
        // The dead domain's own hypercalls fail with ESRCH, and its core reports it.
        assert_eq!(
            front.bind_ipi(0, BindOptions::new(1)),
            Err(Error::Xen(XenError::ESRCH))
        );
    }

    fn words(v: &[u32]) -> Vec<u8> {
        v.iter().flat_map(|w| w.to_ne_bytes()).collect()
    }

    fn word_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
    }

    /// One upcall in dom0: route events to the file by token, as the FreeBSD glue does.
    fn dom0_upcall(ec: &mut Ec<'_>, file: &mut EvtchnFile) -> bool {
        let mut woke = false;
        for e in poll(ec, 0, 0) {
            if e.token == file.token() {
                woke |= file.deliver(e.port);
            }
        }
        woke
    }

    #[test]
    fn dev_xen_evtchn_in_dom0_through_its_ioctls() {
        let (sim, dom0, guest) = pair();
        let mut ec = core(&dom0, 1, ThrottleConfig::default());
        let mut front = core(&guest, 1, ThrottleConfig::default());
        let mut file = EvtchnFile::new(0x1000).unwrap();

        // A tool in dom0 offers a port to the guest...
        let mut arg = words(&[u32::from(guest.domid()), 0]);
        file.ioctl(
            &mut ec,
            dev::IOCTL_EVTCHN_BIND_UNBOUND_PORT.into(),
            &mut arg,
        )
        .unwrap();
        let port = word_at(&arg, 1);
        // ...the guest connects and notifies.
        let fp = front
            .bind_interdomain(dom0.domid(), port, BindOptions::new(5))
            .unwrap();
        front.notify(fp).unwrap();
        sim.run_until_idle();
        assert!(dom0_upcall(&mut ec, &mut file), "reader woken");
        let mut buf = [0u8; 64];
        assert_eq!(file.read(&mut buf), Ok(4));
        assert_eq!(word_at(&buf, 0), port);
        // The port stays masked until the tool writes it back; events meanwhile wait.
        front.notify(fp).unwrap();
        sim.run_until_idle();
        assert!(!dom0_upcall(&mut ec, &mut file));
        assert_eq!(file.read(&mut buf), Err(Errno::EAGAIN));
        assert_eq!(file.write(&mut ec, &words(&[port])), Ok(4));
        dom0_upcall(&mut ec, &mut file);
        assert_eq!(file.read(&mut buf), Ok(4));
        // The tool notifies the guest.
        file.ioctl(
            &mut ec,
            dev::IOCTL_EVTCHN_NOTIFY.into(),
            &mut words(&[port]),
        )
        .unwrap();
        sim.run_until_idle();
        assert_eq!(poll(&mut front, 0, 0), [Event { port: fp, token: 5 }]);

        // A second tool binds to a port the guest offers (BIND_INTERDOMAIN) and a VIRQ.
        let gp = front
            .alloc_unbound(dom0.domid(), BindOptions::new(6))
            .unwrap();
        let mut other = EvtchnFile::new(0x2000).unwrap();
        let mut arg = words(&[u32::from(guest.domid()), gp, 0]);
        other
            .ioctl(&mut ec, dev::IOCTL_EVTCHN_BIND_INTERDOMAIN.into(), &mut arg)
            .unwrap();
        let op = word_at(&arg, 2);
        let mut arg = words(&[Virq::DomExc.value(), 0]);
        other
            .ioctl(&mut ec, dev::IOCTL_EVTCHN_BIND_VIRQ.into(), &mut arg)
            .unwrap();
        let virq_port = word_at(&arg, 1);
        assert!(dom0.raise_virq(Virq::DomExc.value(), 0));
        sim.run_until_idle();
        let mut got = Vec::new();
        for e in poll(&mut ec, 0, 0) {
            if e.token == other.token() {
                other.deliver(e.port);
                got.push(e.port);
            }
        }
        // Xen conservatively marks a freshly bound inter-domain port pending (notifications
        // sent to the unbound port may have been lost), so `op` fires too.
        got.sort_unstable();
        assert_eq!(got, [op.min(virq_port), op.max(virq_port)]);

        // Malformed and foreign requests: an errno, nothing bound or lost.
        let bound = ec.bound();
        let bad: &[(u32, Vec<u8>, Errno)] = &[
            (dev::IOCTL_EVTCHN_UNBIND, words(&[op]), Errno::ENOTCONN),
            (dev::IOCTL_EVTCHN_NOTIFY, words(&[op]), Errno::ENOTCONN),
            (
                dev::IOCTL_EVTCHN_BIND_VIRQ,
                words(&[1000, 0]),
                Errno::EINVAL,
            ),
            (
                dev::IOCTL_EVTCHN_BIND_INTERDOMAIN,
                words(&[70_000, 1, 0]),
                Errno::EINVAL,
            ),
            // The guest's port is already connected: Xen's EINVAL.
            (
                dev::IOCTL_EVTCHN_BIND_INTERDOMAIN,
                words(&[u32::from(guest.domid()), gp, 0]),
                Errno::EINVAL,
            ),
            // A domain that does not exist: Xen's ESRCH (FreeBSD's 3 as well).
            (
                dev::IOCTL_EVTCHN_BIND_INTERDOMAIN,
                words(&[777, 1, 0]),
                Errno(3),
            ),
            (dev::IOCTL_EVTCHN_RESET | 0x10000, Vec::new(), Errno::ENOTTY),
        ];
        for (cmd, data, want) in bad {
            let mut d = data.clone();
            assert_eq!(
                file.ioctl(&mut ec, (*cmd).into(), &mut d),
                Err(*want),
                "{cmd:#x}"
            );
            assert_eq!(ec.bound(), bound);
        }
        assert!(other.owns(op) && ec.lookup(op).is_some());

        // Closing the files unbinds everything they bound, at Xen too.
        other.release(&mut ec);
        assert_eq!(dom0.port_state(op), PortState::Free);
        assert_eq!(dom0.port_state(virq_port), PortState::Free);
        file.ioctl(
            &mut ec,
            dev::IOCTL_EVTCHN_UNBIND.into(),
            &mut words(&[port]),
        )
        .unwrap();
        assert_eq!(dom0.port_state(port), PortState::Free);
        assert_eq!(ec.bound(), 0);
        let _ = DOMID_SELF;
    }
}
