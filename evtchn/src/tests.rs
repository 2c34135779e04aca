//! Unit tests of the core against the fake hypervisor of `testing`.

extern crate std;

use core::mem::offset_of;
use std::vec::Vec;

use xen_kmod::{XenError, DOMID_SELF};
use xen_sys::consts::{EvtchnFifoWord, Virq};
use xen_sys::native::evtchn_fifo_control_block;

use crate::dev::{self, Errno, EvtchnFile};
use crate::testing::{FakeXen, Memory, Pages, State};
use crate::*;

type Ec<'a> = EventChannels<'a, &'a FakeXen<'a>, Pages<'a>>;

const BOTH: [AbiChoice; 2] = [AbiChoice::TwoLevel, AbiChoice::PreferFifo];

fn config(abi: AbiChoice, vcpus: u32) -> Config {
    Config {
        abi,
        max_vcpus: vcpus,
        ..Config::default()
    }
}

fn make<'a>(mem: &'a Memory, xen: &'a FakeXen<'a>, cfg: Config) -> Ec<'a> {
    let mut ec = EventChannels::new(xen, Pages::new(mem), mem.shared(), mem.vcpu(0), cfg).unwrap();
    for v in 1..cfg.max_vcpus {
        ec.add_vcpu(v, mem.vcpu(v)).unwrap();
    }
    ec
}

fn poll(ec: &mut Ec<'_>, vcpu: u32, now: u64, budget: usize) -> (Vec<Event>, bool) {
    let mut out = std::vec![Event::default(); budget];
    let r = ec.poll(vcpu, now, &mut out).unwrap();
    out.truncate(r.delivered);
    (out, r.more)
}

fn drain(ec: &mut Ec<'_>, vcpu: u32, now: u64) -> Vec<Port> {
    let mut all = Vec::new();
    for _ in 0..1000 {
        let (evs, more) = poll(ec, vcpu, now, 64);
        all.extend(evs.iter().map(|e| e.port));
        if !more {
            break;
        }
    }
    all
}

fn loopback(ec: &mut Ec<'_>, ta: Token, tb: Token) -> (Port, Port) {
    let a = ec.alloc_unbound(DOMID_SELF, BindOptions::new(ta)).unwrap();
    let b = ec
        .bind_interdomain(DOMID_SELF, a, BindOptions::new(tb))
        .unwrap();
    (a, b)
}

#[test]
fn fifo_is_used_when_available() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let ec = make(&mem, &xen, config(AbiChoice::PreferFifo, 1));
    assert_eq!(ec.abi(), Abi::Fifo);
    assert_eq!(ec.fifo_refused(), None);
}

#[test]
fn falls_back_to_two_level_when_fifo_is_refused() {
    for e in [XenError::ENOSYS, XenError::EINVAL, XenError::EPERM] {
        let mem = Memory::new(8);
        let xen = FakeXen::refusing_fifo(&mem, e);
        let mut ec = make(&mem, &xen, config(AbiChoice::PreferFifo, 1));
        assert_eq!(ec.abi(), Abi::TwoLevel);
        assert_eq!(ec.fifo_refused(), Some(e));
        // And it works.
        let (a, b) = loopback(&mut ec, 1, 2);
        ec.notify(b).unwrap();
        assert_eq!(drain(&mut ec, 0, 0), [a]);
        assert_eq!(ec.set_priority(a, 3), Err(Error::Unsupported));
    }
}

#[test]
fn two_level_masks_every_port_at_start() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let ec = make(&mem, &xen, config(AbiChoice::TwoLevel, 1));
    assert!(ec.is_masked(1) && ec.is_masked(4095.min(xen_kmod::shared::EVTCHN_2L_NR_CHANNELS - 1)));
}

#[test]
fn notify_delivers_both_ways() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let mut ec = make(&mem, &xen, config(abi, 1));
        let (a, b) = loopback(&mut ec, 10, 20);
        assert!(!mem.vcpu(0).upcall_pending());
        ec.notify(b).unwrap();
        assert!(mem.vcpu(0).upcall_pending(), "{abi:?}: upcall raised");
        let (evs, more) = poll(&mut ec, 0, 0, 8);
        assert_eq!(evs, [Event { port: a, token: 10 }], "{abi:?}");
        assert!(!more);
        assert!(!mem.vcpu(0).upcall_pending(), "poll clears the upcall flag");
        ec.notify(a).unwrap();
        assert_eq!(poll(&mut ec, 0, 0, 8).0, [Event { port: b, token: 20 }]);
        // Nothing left.
        assert_eq!(poll(&mut ec, 0, 0, 8), (Vec::new(), false));
        assert_eq!(ec.lookup(a).map(|l| l.0), Some(10));
        assert_eq!(ec.port_stats(a).unwrap().delivered, 1);
    }
}

#[test]
fn two_level_scan_is_bounded_and_delivers_each_port_once() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::TwoLevel, 1));
    let ports: Vec<Port> = (0..150)
        .map(|i| ec.bind_ipi(0, BindOptions::new(i)).unwrap())
        .collect();
    for &p in &ports {
        xen.raise(p);
    }
    let mut seen = Vec::new();
    let mut polls = 0;
    loop {
        let (evs, more) = poll(&mut ec, 0, 0, 10);
        polls += 1;
        assert!(evs.len() <= 10);
        seen.extend(evs.iter().map(|e| e.port));
        if !more {
            break;
        }
        assert!(polls < 100);
    }
    assert_eq!(seen, ports, "every port once, in scan order");
    assert!(polls <= 16);
    assert!(ec.stats().budget_exhausted >= 14);
}

#[test]
fn two_level_resumes_after_last_port_so_a_busy_port_cannot_starve_others() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::TwoLevel, 1));
    let busy = ec.bind_ipi(0, BindOptions::new(0)).unwrap();
    let others: Vec<Port> = (1..=60)
        .map(|i| ec.bind_ipi(0, BindOptions::new(i)).unwrap())
        .collect();
    xen.raise(busy);
    for &p in &others {
        xen.raise(p);
    }
    let mut served = Vec::new();
    let mut busy_count = 0;
    let mut polls = 0;
    while served.len() < others.len() {
        let (evs, _) = poll(&mut ec, 0, 0, 4);
        polls += 1;
        for e in evs {
            if e.port == busy {
                busy_count += 1;
            } else {
                served.push(e.port);
            }
        }
        // The busy port fires again after every poll.
        xen.raise(busy);
        assert!(
            polls <= 20,
            "others starved: {} of {} after {polls} polls",
            served.len(),
            others.len()
        );
    }
    served.sort_unstable();
    assert_eq!(served, others);
    assert!(
        busy_count <= 3,
        "busy port served once per round, got {busy_count}"
    );
    assert_eq!(ec.l2_position(0).map(|(w, _)| w < 64), Some(true));
}

#[test]
fn fifo_scan_is_bounded_fifo_ordered_and_priority_first() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::PreferFifo, 1));
    let low = ec.bind_ipi(0, BindOptions::new(1)).unwrap();
    let high = ec.bind_ipi(0, BindOptions::new(2)).unwrap();
    let mid = ec.bind_ipi(0, BindOptions::new(3)).unwrap();
    ec.set_priority(low, 15).unwrap();
    ec.set_priority(high, 0).unwrap();
    assert_eq!(ec.set_priority(mid, 16), Err(Error::InvalidArgument));
    xen.raise(low);
    xen.raise(mid);
    xen.raise(high);
    let got: Vec<Port> = poll(&mut ec, 0, 0, 8).0.iter().map(|e| e.port).collect();
    assert_eq!(got, [high, mid, low]);

    // Same priority: queue order, bounded per call, resumed exactly.
    let ports: Vec<Port> = (0..100)
        .map(|i| ec.bind_ipi(0, BindOptions::new(100 + i)).unwrap())
        .collect();
    for &p in ports.iter().rev() {
        xen.raise(p);
    }
    let mut seen = Vec::new();
    for _ in 0..30 {
        let (evs, more) = poll(&mut ec, 0, 0, 7);
        assert!(evs.len() <= 7);
        seen.extend(evs.iter().map(|e| e.port));
        if !more {
            break;
        }
    }
    let mut want = ports.clone();
    want.reverse();
    assert_eq!(seen, want);
}

#[test]
fn fifo_event_array_grows_for_high_ports() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::PreferFifo, 1));
    xen.inner.borrow_mut().next_port_override = Some(1500);
    let p = ec.bind_ipi(0, BindOptions::new(1)).unwrap();
    assert_eq!(p, 1500);
    assert!(!ec.is_masked(1500));
    // Out of pages: the bind fails and the port is given back.
    let mem2 = Memory::new(3);
    let xen2 = FakeXen::new(&mem2);
    let mut ec2 = make(&mem2, &xen2, config(AbiChoice::PreferFifo, 1));
    xen2.inner.borrow_mut().next_port_override = Some(1500);
    assert_eq!(ec2.bind_ipi(0, BindOptions::new(1)), Err(Error::NoMemory));
    assert_eq!(xen2.inner.borrow().close_attempts, [1500]);
    assert_eq!(ec2.bound(), 0);
}

#[test]
fn impossible_ports_from_the_hypervisor_are_refused_and_closed() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let mut ec = make(
            &mem,
            &xen,
            Config {
                max_ports: 2048,
                ..config(abi, 1)
            },
        );
        for bad in [0, 2048, 5000, 1 << 17, u32::MAX] {
            xen.inner.borrow_mut().next_port_override = Some(bad);
            let r = ec.alloc_unbound(DOMID_SELF, BindOptions::new(1));
            assert!(
                matches!(
                    r,
                    Err(Error::PortOutOfRange(_)) | Err(Error::Xen(XenError::EINVAL))
                ),
                "{abi:?} {bad}: {r:?}"
            );
        }
        assert_eq!(ec.bound(), 0);
        // A port Xen hands out although we have it bound: refused, existing binding untouched.
        let a = ec.alloc_unbound(DOMID_SELF, BindOptions::new(7)).unwrap();
        xen.inner.borrow_mut().next_port_override = Some(a);
        assert_eq!(
            ec.bind_ipi(0, BindOptions::new(8)),
            Err(Error::PortInUse(a))
        );
        assert_eq!(ec.lookup(a).map(|l| l.0), Some(7));
        assert!(!xen.inner.borrow().closed.contains(&a));
    }
}

#[test]
fn unmask_redelivers_events_raised_while_masked() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let mut ec = make(&mem, &xen, config(abi, 1));
        let p = ec.bind_ipi(0, BindOptions::new(1)).unwrap();
        ec.mask(p).unwrap();
        xen.raise(p);
        assert_eq!(poll(&mut ec, 0, 0, 8).0, [], "{abi:?}: masked");
        assert!(ec.is_pending(p));
        let before = xen.inner.borrow().unmask_calls;
        ec.unmask(p).unwrap();
        assert_eq!(
            xen.inner.borrow().unmask_calls,
            before + 1,
            "{abi:?}: Xen asked to re-deliver"
        );
        assert_eq!(poll(&mut ec, 0, 0, 8).0.len(), 1, "{abi:?}: not lost");
        // Nothing pending: unmask is local, no hypercall.
        ec.mask(p).unwrap();
        ec.unmask(p).unwrap();
        assert_eq!(xen.inner.borrow().unmask_calls, before + 1, "{abi:?}");
        assert!(!ec.is_masked(p));
        assert_eq!(ec.mask(999), Err(Error::NotBound(999)));
        assert_eq!(ec.unmask(999), Err(Error::NotBound(999)));
    }
}

#[test]
fn auto_mask_holds_the_port_until_unmasked() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let mut ec = make(&mem, &xen, config(abi, 1));
        let p = ec
            .bind_ipi(
                0,
                BindOptions {
                    auto_mask: true,
                    ..BindOptions::new(5)
                },
            )
            .unwrap();
        xen.raise(p);
        assert_eq!(poll(&mut ec, 0, 0, 8).0.len(), 1);
        assert!(ec.is_masked(p));
        xen.raise(p);
        assert_eq!(poll(&mut ec, 0, 0, 8).0.len(), 0, "{abi:?}: held");
        ec.unmask(p).unwrap();
        assert_eq!(poll(&mut ec, 0, 0, 8).0.len(), 1, "{abi:?}: then delivered");
    }
}

#[test]
fn start_masked_ports_stay_quiet_until_unmasked() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let mut ec = make(&mem, &xen, config(abi, 1));
        let p = ec
            .bind_ipi(
                0,
                BindOptions {
                    start_masked: true,
                    ..BindOptions::new(5)
                },
            )
            .unwrap();
        xen.raise(p);
        assert!(poll(&mut ec, 0, 0, 8).0.is_empty());
        ec.unmask(p).unwrap();
        assert_eq!(poll(&mut ec, 0, 0, 8).0.len(), 1);
    }
}

#[test]
fn flooding_peer_is_throttled_then_released_without_loss() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let throttle = ThrottleConfig {
            window_ns: 1000,
            max_per_window: 5,
            defer_ns: 500,
        };
        let mut ec = make(
            &mem,
            &xen,
            Config {
                throttle,
                ..config(abi, 1)
            },
        );
        let (a, b) = loopback(&mut ec, 1, 2);
        let ipi = ec.bind_ipi(0, BindOptions::new(3)).unwrap();
        let mut got = 0;
        for _ in 0..20 {
            ec.notify(b).unwrap();
            got += poll(&mut ec, 0, 10, 8).0.len();
        }
        assert_eq!(
            got, 6,
            "{abi:?}: 5 allowed + the one that tripped the limit"
        );
        assert!(ec.is_throttled(a));
        assert!(ec.is_masked(a));
        assert_eq!(ec.port_stats(a).unwrap().throttled, 1);
        assert_eq!(ec.stats().throttled, 1);
        assert_eq!(ec.next_deadline(), Some(510));
        assert!(ec.is_pending(a), "later events wait at Xen");
        // Not yet.
        assert_eq!(ec.tick(400), 0);
        assert!(poll(&mut ec, 0, 400, 8).0.is_empty());
        // Released: the pending event arrives.
        assert_eq!(ec.tick(510), 1);
        assert!(!ec.is_throttled(a));
        assert_eq!(poll(&mut ec, 0, 510, 8).0, [Event { port: a, token: 1 }]);
        assert_eq!(ec.next_deadline(), None);
        // IPIs are not throttled by default.
        for _ in 0..20 {
            ec.notify(ipi).unwrap();
            assert_eq!(poll(&mut ec, 0, 600, 8).0.len(), 1);
        }
        // A user mask survives the end of a throttle.
        for _ in 0..6 {
            ec.notify(b).unwrap();
            poll(&mut ec, 0, 2000, 8);
        }
        assert!(ec.is_throttled(a));
        ec.mask(a).unwrap();
        ec.tick(5000);
        assert!(ec.is_masked(a), "{abi:?}: still user-masked");
    }
}

#[test]
fn close_forgets_ports_and_closes_them_at_xen_except_adopted_ones() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let mut ec = make(&mem, &xen, config(abi, 1));
        let store = xen.preallocate();
        let s = ec.adopt(store, BindOptions::new(9)).unwrap();
        assert_eq!(s, store);
        assert_eq!(
            ec.adopt(store, BindOptions::new(9)),
            Err(Error::PortInUse(store))
        );
        let p = ec.bind_ipi(0, BindOptions::new(1)).unwrap();
        ec.close(p).unwrap();
        assert_eq!(xen.state(p), Some(State::Free));
        assert_eq!(ec.notify(p), Err(Error::NotBound(p)));
        assert_eq!(ec.close(p), Err(Error::NotBound(p)));
        ec.close(s).unwrap();
        assert_eq!(
            xen.state(store),
            Some(State::Unbound),
            "{abi:?}: adopted port stays open"
        );
        xen.raise(store);
        assert!(
            poll(&mut ec, 0, 0, 8).0.is_empty(),
            "{abi:?}: no delivery after close"
        );
        assert_eq!(
            ec.adopt(0, BindOptions::new(1)),
            Err(Error::PortOutOfRange(0))
        );
    }
}

#[test]
fn vcpus_get_only_their_own_events() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let mut ec = make(&mem, &xen, config(abi, 2));
        let ipi1 = ec.bind_ipi(1, BindOptions::new(11)).unwrap();
        let ipi0 = ec.bind_ipi(0, BindOptions::new(10)).unwrap();
        assert_eq!(
            ec.bind_ipi(2, BindOptions::new(0)),
            Err(Error::InvalidVcpu(2))
        );
        ec.notify(ipi1).unwrap();
        assert!(poll(&mut ec, 0, 0, 8).0.is_empty(), "{abi:?}");
        assert_eq!(
            poll(&mut ec, 1, 0, 8).0,
            [Event {
                port: ipi1,
                token: 11
            }]
        );
        // Moving an inter-domain port to vCPU 1.
        let (a, b) = loopback(&mut ec, 1, 2);
        ec.bind_vcpu(a, 1).unwrap();
        assert_eq!(xen.vcpu_of(a), Some(1));
        ec.notify(b).unwrap();
        assert!(poll(&mut ec, 0, 0, 8).0.is_empty());
        assert_eq!(poll(&mut ec, 1, 0, 8).0.len(), 1);
        // poll_all serves both.
        ec.notify(ipi0).unwrap();
        ec.notify(ipi1).unwrap();
        let mut out = [Event::default(); 8];
        let r = ec.poll_all(0, &mut out).unwrap();
        let mut got: Vec<Port> = out[..r.delivered].iter().map(|e| e.port).collect();
        got.sort_unstable();
        assert_eq!(got, [ipi1.min(ipi0), ipi1.max(ipi0)]);
        assert_eq!(ec.poll(7, 0, &mut out), Err(Error::InvalidVcpu(7)));
    }
}

#[test]
fn event_on_a_vcpu_moved_while_pending_is_not_lost() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::TwoLevel, 2));
    let (a, b) = loopback(&mut ec, 1, 2);
    ec.mask(a).unwrap();
    ec.notify(b).unwrap();
    ec.bind_vcpu(a, 1).unwrap();
    ec.unmask(a).unwrap();
    assert_eq!(poll(&mut ec, 1, 0, 8).0.len(), 1);
}

#[test]
fn unknown_linked_port_in_fifo_is_masked_and_counted() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::PreferFifo, 1));
    let bound = ec.bind_ipi(0, BindOptions::new(1)).unwrap();
    // Page 1 is vCPU 0's control block, page 2 the first event-array page (see `Pages`).
    let control = xen_shmem::SharedMem::from_pages(core::slice::from_ref(&mem.pages[1]));
    let array = xen_shmem::SharedMem::from_pages(core::slice::from_ref(&mem.pages[2]));
    let stranger = 77;
    let w = EvtchnFifoWord::PENDING | EvtchnFifoWord::LINKED;
    array
        .store_relaxed_u32(stranger as usize * 4, w.bits())
        .unwrap();
    control
        .store_relaxed_u32(
            offset_of!(evtchn_fifo_control_block, head) + 7 * 4,
            stranger,
        )
        .unwrap();
    control
        .store_relaxed_u32(offset_of!(evtchn_fifo_control_block, ready), 1 << 7)
        .unwrap();
    assert!(poll(&mut ec, 0, 0, 8).0.is_empty());
    assert_eq!(ec.stats().spurious, 1);
    assert!(ec.is_masked(stranger));
    // The bound port still works afterwards.
    xen.raise(bound);
    assert_eq!(poll(&mut ec, 0, 0, 8).0.len(), 1);
}

#[test]
fn corrupt_fifo_queues_are_cut_not_followed() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::PreferFifo, 1));
    let a = ec.bind_ipi(0, BindOptions::new(1)).unwrap();
    let b = ec.bind_ipi(0, BindOptions::new(2)).unwrap();
    let control = xen_shmem::SharedMem::from_pages(core::slice::from_ref(&mem.pages[1]));
    let array = xen_shmem::SharedMem::from_pages(core::slice::from_ref(&mem.pages[2]));
    let head = offset_of!(evtchn_fifo_control_block, head);
    let ready = offset_of!(evtchn_fifo_control_block, ready);
    let pl = (EvtchnFifoWord::PENDING | EvtchnFifoWord::LINKED).bits();
    // A cycle a -> b -> a.
    array.store_relaxed_u32(a as usize * 4, pl | b).unwrap();
    array.store_relaxed_u32(b as usize * 4, pl | a).unwrap();
    control.store_relaxed_u32(head + 7 * 4, a).unwrap();
    control.store_relaxed_u32(ready, 1 << 7).unwrap();
    let (evs, _) = poll(&mut ec, 0, 0, 100);
    assert_eq!(evs.len(), 2, "each delivered once, cycle broken");
    drain(&mut ec, 0, 0);
    // A head beyond the event array, a link beyond it, ready bits for queues that do not exist.
    control.store_relaxed_u32(head + 3 * 4, 60_000).unwrap();
    array
        .store_relaxed_u32(a as usize * 4, pl | 100_000 & 0x1ffff)
        .unwrap();
    control.store_relaxed_u32(head + 4 * 4, a).unwrap();
    control
        .store_relaxed_u32(ready, (1 << 3) | (1 << 4) | 0xffff_0000)
        .unwrap();
    let _ = drain(&mut ec, 0, 0);
    assert_eq!(ec.stats().bad_links, 2);
    // Still healthy.
    xen.raise(b);
    assert_eq!(poll(&mut ec, 0, 0, 8).0.len(), 1);
}

#[test]
fn hostile_two_level_selector_bits_are_harmless() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::TwoLevel, 1));
    let p = ec.bind_ipi(0, BindOptions::new(1)).unwrap();
    // Every selector bit and every pending bit set by a confused hypervisor.
    let v = mem.vcpu(0);
    for bit in 0..xen_kmod::shared::BITS_PER_XEN_ULONG {
        v.set_pending_sel_bit(bit);
    }
    for port in 0..xen_kmod::shared::EVTCHN_2L_NR_CHANNELS {
        mem.shared().evtchn_pending().test_and_set(port);
    }
    let got = drain(&mut ec, 0, 0);
    assert_eq!(got, [p], "only our unmasked port is delivered");
}

#[test]
fn freebsd_ioctl_numbers() {
    assert_eq!(dev::IOCTL_EVTCHN_BIND_VIRQ, 0xC008_4504);
    assert_eq!(dev::IOCTL_EVTCHN_BIND_INTERDOMAIN, 0xC00C_4505);
    assert_eq!(dev::IOCTL_EVTCHN_BIND_UNBOUND_PORT, 0xC008_4506);
    assert_eq!(dev::IOCTL_EVTCHN_UNBIND, 0x8004_4507);
    assert_eq!(dev::IOCTL_EVTCHN_NOTIFY, 0x8004_4508);
    assert_eq!(dev::IOCTL_EVTCHN_RESET, 0x2000_4509);
    assert_eq!(dev::FIONBIO, 0x8004_667e);
    assert_eq!(dev::FIOASYNC, 0x8004_667d);
}

fn words(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn word_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes(b[i * 4..i * 4 + 4].try_into().unwrap())
}

/// Routes events to files by token, as the glue does.
fn dispatch(ec: &mut Ec<'_>, files: &mut [&mut EvtchnFile]) {
    let mut out = [Event::default(); 32];
    let r = ec.poll(0, 0, &mut out).unwrap();
    for e in &out[..r.delivered] {
        for f in files.iter_mut() {
            if f.token() == e.token {
                f.deliver(e.port);
            }
        }
    }
}

#[test]
fn dev_bind_notify_read_write_cycle() {
    for abi in BOTH {
        let mem = Memory::new(8);
        let xen = FakeXen::new(&mem);
        let mut ec = make(&mem, &xen, config(abi, 1));
        let mut f = EvtchnFile::new(100).unwrap();
        let mut arg = words(&[u32::from(DOMID_SELF), 0]);
        f.ioctl(
            &mut ec,
            dev::IOCTL_EVTCHN_BIND_UNBOUND_PORT.into(),
            &mut arg,
        )
        .unwrap();
        let p = word_at(&arg, 1);
        let mut arg = words(&[u32::from(DOMID_SELF), p, 0]);
        f.ioctl(&mut ec, dev::IOCTL_EVTCHN_BIND_INTERDOMAIN.into(), &mut arg)
            .unwrap();
        let q = word_at(&arg, 2);
        assert!(f.owns(p) && f.owns(q));
        let mut buf = [0u8; 16];
        assert_eq!(f.read(&mut buf), Err(Errno::EAGAIN));
        f.ioctl(&mut ec, dev::IOCTL_EVTCHN_NOTIFY.into(), &mut words(&[q]))
            .unwrap();
        dispatch(&mut ec, &mut [&mut f]);
        assert!(f.readable());
        assert_eq!(f.read(&mut buf), Ok(4));
        assert_eq!(word_at(&buf, 0), p);
        // Masked until written back.
        f.ioctl(&mut ec, dev::IOCTL_EVTCHN_NOTIFY.into(), &mut words(&[q]))
            .unwrap();
        dispatch(&mut ec, &mut [&mut f]);
        assert!(!f.readable(), "{abi:?}");
        assert_eq!(f.write(&mut ec, &words(&[p, 12345])), Ok(8));
        dispatch(&mut ec, &mut [&mut f]);
        assert_eq!(
            f.read(&mut buf),
            Ok(4),
            "{abi:?}: the held event arrives after write()"
        );
        // VIRQ binding.
        let mut arg = words(&[Virq::Debug.value(), 0]);
        f.ioctl(&mut ec, dev::IOCTL_EVTCHN_BIND_VIRQ.into(), &mut arg)
            .unwrap();
        assert!(f.owns(word_at(&arg, 1)));
        // Unbind and release.
        f.ioctl(&mut ec, dev::IOCTL_EVTCHN_UNBIND.into(), &mut words(&[p]))
            .unwrap();
        assert!(!f.owns(p));
        assert_eq!(xen.state(p), Some(State::Free));
        let bound = ec.bound();
        f.release(&mut ec);
        assert_eq!(ec.bound(), bound - 2);
        assert_eq!(f.ports().count(), 0);
    }
}

#[test]
fn dev_rejects_bad_input_without_side_effects() {
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::PreferFifo, 1));
    let mut f = EvtchnFile::new(1).unwrap();
    let mut other = EvtchnFile::new(2).unwrap();
    let mut arg = words(&[u32::from(DOMID_SELF), 0]);
    other
        .ioctl(
            &mut ec,
            dev::IOCTL_EVTCHN_BIND_UNBOUND_PORT.into(),
            &mut arg,
        )
        .unwrap();
    let theirs = word_at(&arg, 1);
    let bound = ec.bound();
    let cases: &[(u32, Vec<u8>, Errno)] = &[
        (0xdead_beef, words(&[0, 0]), Errno::ENOTTY),
        (dev::IOCTL_EVTCHN_BIND_VIRQ, std::vec![0; 7], Errno::EINVAL),
        (dev::IOCTL_EVTCHN_BIND_VIRQ, words(&[5, 0]), Errno::EINVAL),
        (dev::IOCTL_EVTCHN_BIND_VIRQ, words(&[99, 0]), Errno::EINVAL),
        (
            dev::IOCTL_EVTCHN_BIND_INTERDOMAIN,
            words(&[0x1_0000, 1, 0]),
            Errno::EINVAL,
        ),
        (
            dev::IOCTL_EVTCHN_BIND_INTERDOMAIN,
            words(&[0, 0, 0]),
            Errno::EINVAL,
        ),
        (
            dev::IOCTL_EVTCHN_BIND_INTERDOMAIN,
            words(&[0, 1 << 17, 0]),
            Errno::EINVAL,
        ),
        // The fake refuses binding to a port that is not unbound: Xen's EINVAL, as FreeBSD's.
        (
            dev::IOCTL_EVTCHN_BIND_INTERDOMAIN,
            words(&[u32::from(DOMID_SELF), 999, 0]),
            Errno::EINVAL,
        ),
        (
            dev::IOCTL_EVTCHN_BIND_UNBOUND_PORT,
            words(&[0xffff_ffff, 0]),
            Errno::EINVAL,
        ),
        (dev::IOCTL_EVTCHN_UNBIND, words(&[theirs]), Errno::ENOTCONN),
        (dev::IOCTL_EVTCHN_NOTIFY, words(&[theirs]), Errno::ENOTCONN),
        (
            dev::IOCTL_EVTCHN_UNBIND,
            words(&[u32::MAX]),
            Errno::ENOTCONN,
        ),
        (dev::IOCTL_EVTCHN_NOTIFY, std::vec![1, 2], Errno::EINVAL),
    ];
    for (cmd, data, want) in cases {
        let mut d = data.clone();
        assert_eq!(
            f.ioctl(&mut ec, (*cmd).into(), &mut d),
            Err(*want),
            "cmd {cmd:#x} {data:?}"
        );
        assert_eq!(ec.bound(), bound, "cmd {cmd:#x}: nothing bound or unbound");
        assert_eq!(f.ports().count(), 0);
    }
    // A command with garbage in the upper 32 bits is not aliased onto a real one.
    let mut d = words(&[theirs]);
    assert_eq!(
        f.ioctl(
            &mut ec,
            (1u64 << 32) | u64::from(dev::IOCTL_EVTCHN_NOTIFY),
            &mut d
        ),
        Err(Errno::ENOTTY)
    );
    // The other file's port is still bound and works.
    assert!(other.owns(theirs) && ec.lookup(theirs).is_some());
    // Upper-layer ioctls are accepted.
    assert_eq!(
        f.ioctl(&mut ec, dev::FIONBIO.into(), &mut words(&[1])),
        Ok(())
    );
}

#[test]
fn dev_ring_overflow_reset_and_read_sizes() {
    let mut f = EvtchnFile::new(1).unwrap();
    let mem = Memory::new(8);
    let xen = FakeXen::new(&mem);
    let mut ec = make(&mem, &xen, config(AbiChoice::TwoLevel, 1));
    let mut arg = words(&[u32::from(DOMID_SELF), 0]);
    f.ioctl(
        &mut ec,
        dev::IOCTL_EVTCHN_BIND_UNBOUND_PORT.into(),
        &mut arg,
    )
    .unwrap();
    let p = word_at(&arg, 1);
    assert!(!f.deliver(9999), "not ours: ignored");
    assert!(f.deliver(p), "first event wakes readers");
    assert!(!f.deliver(p));
    let mut small = [0u8; 3];
    assert_eq!(f.read(&mut small), Ok(0));
    let mut seven = [0u8; 7];
    assert_eq!(f.read(&mut seven), Ok(4));
    let mut big = [0u8; 64];
    assert_eq!(f.read(&mut big), Ok(4));
    for _ in 0..dev::RING_SIZE {
        f.deliver(p);
    }
    assert!(!f.overflowed());
    f.deliver(p);
    assert!(f.overflowed());
    assert_eq!(f.read(&mut big), Err(Errno::EFBIG));
    f.ioctl(&mut ec, dev::IOCTL_EVTCHN_RESET.into(), &mut [])
        .unwrap();
    assert!(!f.overflowed());
    assert_eq!(f.read(&mut big), Err(Errno::EAGAIN));
    // A full-page read is capped at a page.
    for _ in 0..dev::RING_SIZE {
        f.deliver(p);
    }
    let mut huge = std::vec![0u8; 8192];
    assert_eq!(f.read(&mut huge), Ok(4096));
    // Writes round down and ignore stray bytes.
    assert_eq!(f.write(&mut ec, &[0, 0, 0]), Ok(0));
}
