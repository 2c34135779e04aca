//! Event channels of the simulated hypervisor: per-domain port tables, interdomain binding,
//! VIRQs and IPIs, and delivery into the receiver's 2-level `shared_info` bitmaps exactly as
//! Xen's `evtchn_2l_set_pending` does it:
//!
//! 1. test-and-set the port's bit in `evtchn_pending` (already set: nothing more to do);
//! 2. unless the port's bit in `evtchn_mask` is set, test-and-set bit `port / 64` of the
//!    target vCPU's `evtchn_pending_sel`, and if it was clear, set `evtchn_upcall_pending`
//!    (and, if that was clear, "kick" the vCPU: count an upcall and call the domain's hook).
//!
//! `EVTCHNOP_unmask` re-runs step 2 for a pending port, as Xen does. The layout is the x86_64
//! one (`shared_info` of 3136 bytes, 64-byte `vcpu_info`s, 64-bit selector words); a vCPU's
//! `vcpu_info` can be moved into guest memory with `VCPUOP_register_vcpu_info`.
//!
//! The FIFO ABI is refused with `ENOSYS` by default (as QEMU's Xen emulation does), so guests
//! exercise their fallback to 2-level; [`super::hypervisor::FifoSupport::Supported`] switches
//! on a simplified FIFO model ([`super::fifo`]).
//!
//! Notifications go through the fault layer and the virtual-time queue: a send may be
//! delivered at once, later, twice, or never, as the rules and the seeded generator decide.
use std::cmp::Reverse;
use std::sync::atomic::Ordering;

use xen_kmod::XenError;
use xen_sys::x86_64 as abi;

use super::faults::EventAction;
use super::hypervisor::{FifoSupport, State, Wake};
use super::memory::{Machine, Phys};

/// Ports of the 2-level ABI with 64-bit selector words (64 × 64).
pub const NR_PORTS_2L: u32 = 4096;

const EVTCHN_PENDING_OFFSET: usize = core::mem::offset_of!(abi::shared_info, evtchn_pending);
const EVTCHN_MASK_OFFSET: usize = core::mem::offset_of!(abi::shared_info, evtchn_mask);
const VCPU_INFO_SIZE: usize = core::mem::size_of::<abi::vcpu_info>();
const UPCALL_PENDING_OFFSET: usize = core::mem::offset_of!(abi::vcpu_info, evtchn_upcall_pending);
const PENDING_SEL_OFFSET: usize = core::mem::offset_of!(abi::vcpu_info, evtchn_pending_sel);
const LEGACY_VCPUS: u32 = abi::XEN_LEGACY_MAX_VCPUS;

/// The state of one port, as `EVTCHNOP_status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Not allocated.
    Free,
    /// Allocated, waiting for `remote` to bind.
    Unbound {
        /// The domain allowed to bind.
        remote: u16,
    },
    /// Connected to `port` of `remote`.
    Interdomain {
        /// The other domain.
        remote: u16,
        /// Its port.
        port: u32,
    },
    /// Bound to a virtual IRQ.
    Virq(u32),
    /// An inter-vCPU port.
    Ipi,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Port {
    pub(crate) state: PortState,
    pub(crate) vcpu: u32,
}

/// A domain's event channel state.
#[derive(Debug)]
pub(crate) struct EventState {
    pub(crate) ports: Vec<Port>,
    /// Where each vCPU's `vcpu_info` lives if registered: (MFN, byte offset).
    pub(crate) vcpu_info: Vec<Option<(usize, usize)>>,
}

impl EventState {
    pub(crate) fn new(vcpus: u32) -> Self {
        EventState {
            // Port 0 is never allocated.
            ports: vec![Port {
                state: PortState::Free,
                vcpu: 0,
            }],
            vcpu_info: vec![None; vcpus as usize],
        }
    }

    fn alloc(&mut self) -> Result<u32, XenError> {
        if let Some(p) = (1..self.ports.len()).find(|&p| self.ports[p].state == PortState::Free) {
            return u32::try_from(p).map_err(|_| XenError::ENOSPC);
        }
        let p = u32::try_from(self.ports.len()).map_err(|_| XenError::ENOSPC)?;
        if p >= NR_PORTS_2L {
            return Err(XenError::ENOSPC);
        }
        self.ports.push(Port {
            state: PortState::Free,
            vcpu: 0,
        });
        Ok(p)
    }

    pub(crate) fn get(&self, port: u32) -> Option<Port> {
        if port == 0 {
            return None;
        }
        self.ports
            .get(port as usize)
            .copied()
            .filter(|p| p.state != PortState::Free)
    }

    fn set(&mut self, port: u32, state: PortState, vcpu: u32) {
        if let Some(p) = self.ports.get_mut(port as usize) {
            *p = Port { state, vcpu };
        }
    }
}

/// One bit of a bitmap made of 32-bit words starting at `base` (x86 is little-endian, so bit
/// `n` of a 64-bit `xen_ulong_t` array is bit `n % 32` of word `n / 32`).
fn bit(base: usize, n: u32) -> (usize, u32) {
    (base / 4 + (n / 32) as usize, 1 << (n % 32))
}

impl State {
    /// Where `vcpu`'s `vcpu_info` is: (MFN, byte offset).
    fn vcpu_info_loc(&self, dom: u16, vcpu: u32) -> Option<(usize, usize)> {
        let d = self.domains.get(&dom)?;
        if let Some(Some(loc)) = d.evt.vcpu_info.get(vcpu as usize) {
            return Some(*loc);
        }
        (vcpu < LEGACY_VCPUS && vcpu < d.vcpus)
            .then(|| (d.shared_info, vcpu as usize * VCPU_INFO_SIZE))
    }

    /// Step 2 of the delivery: selector bit, then upcall_pending.
    fn mark_pending(&mut self, m: &Machine, dom: u16, port: u32, vcpu: u32) {
        let Some((mfn, off)) = self.vcpu_info_loc(dom, vcpu) else {
            return;
        };
        let Some(page) = m.page(mfn) else { return };
        let (w, b) = bit(off + PENDING_SEL_OFFSET, port / 64);
        let Some(sel) = page.0.get(w) else { return };
        if sel.fetch_or(b, Ordering::SeqCst) & b != 0 {
            return;
        }
        self.raise_upcall(m, dom, vcpu);
    }

    /// Sets `evtchn_upcall_pending` of `vcpu`; if it was clear, "kicks" the vCPU (counts an
    /// upcall and queues the domain's hook).
    pub(crate) fn raise_upcall(&mut self, m: &Machine, dom: u16, vcpu: u32) {
        let Some((mfn, off)) = self.vcpu_info_loc(dom, vcpu) else {
            return;
        };
        let Some(page) = m.page(mfn) else { return };
        // evtchn_upcall_pending is byte 0 of the vcpu_info: bit 0 of its (aligned) word.
        let (w, b) = bit(off + UPCALL_PENDING_OFFSET, 0);
        let Some(up) = page.0.get(w) else { return };
        if up.fetch_or(b, Ordering::SeqCst) & b != 0 {
            return;
        }
        self.stats.upcalls += 1;
        if let Some(d) = self.domains.get_mut(&dom) {
            d.upcalls += 1;
            if let Some(h) = &d.upcall_hook {
                self.wake.push(Wake::Upcall(h.clone(), vcpu));
            }
        }
    }

    /// `evtchn_2l_set_pending` on `port` of `dom`.
    pub(crate) fn set_pending(&mut self, m: &Machine, dom: u16, port: u32) {
        let Some(d) = self.domains.get(&dom) else {
            return;
        };
        if d.dead {
            return;
        }
        let Some(p) = d.evt.get(port) else { return };
        if d.fifo.is_some() {
            self.stats.events_delivered += 1;
            self.fifo_set_pending(m, dom, port, p.vcpu);
            return;
        }
        let Some(si) = m.page(d.shared_info) else {
            return;
        };
        let (w, b) = bit(EVTCHN_PENDING_OFFSET, port);
        let Some(pending) = si.0.get(w) else { return };
        self.stats.events_delivered += 1;
        if pending.fetch_or(b, Ordering::SeqCst) & b != 0 {
            return;
        }
        let (w, b) = bit(EVTCHN_MASK_OFFSET, port);
        if si
            .0
            .get(w)
            .is_some_and(|mask| mask.load(Ordering::SeqCst) & b != 0)
        {
            return;
        }
        self.mark_pending(m, dom, port, p.vcpu);
    }

    fn clear_pending(&self, m: &Machine, dom: u16, port: u32) {
        let Some(d) = self.domains.get(&dom) else {
            return;
        };
        if d.fifo.is_some() {
            self.fifo_clear_pending(m, dom, port);
            return;
        }
        let (w, b) = bit(EVTCHN_PENDING_OFFSET, port);
        if let Some(pending) = m.page(d.shared_info).and_then(|si| si.0.get(w)) {
            pending.fetch_and(!b, Ordering::SeqCst);
        }
    }

    /// A notification from `from` to port `port` of `to`, through faults and scheduling.
    pub(crate) fn notify(&mut self, m: &Machine, from: u16, to: u16, port: u32) {
        self.stats.events_sent += 1;
        let action = self.faults.event(from, to, port, &mut self.rng);
        let (lo, hi) = self.cfg.event_latency;
        let latency = lo + self.rng.below(hi.saturating_sub(lo) + 1);
        if action.is_some() {
            self.stats.injected_event_faults += 1;
        }
        match action {
            Some(EventAction::Drop) => self.stats.events_dropped += 1,
            Some(EventAction::Duplicate) => {
                self.stats.events_duplicated += 1;
                self.schedule(m, to, port, latency);
                self.schedule(m, to, port, latency + 1);
            }
            Some(EventAction::Delay(t)) => {
                self.stats.events_delayed += 1;
                self.schedule(m, to, port, latency + t.max(1));
            }
            None => self.schedule(m, to, port, latency),
        }
    }

    fn schedule(&mut self, m: &Machine, to: u16, port: u32, delay: u64) {
        if delay == 0 {
            self.set_pending(m, to, port);
        } else {
            self.seq += 1;
            self.queue
                .push(Reverse((self.now + delay, self.seq, to, port)));
        }
    }

    /// Delivers everything due at or before `now`; returns how many were delivered.
    pub(crate) fn run_due(&mut self, m: &Machine) -> usize {
        let mut n = 0;
        while let Some(&Reverse((due, _, to, port))) = self.queue.peek() {
            if due > self.now {
                break;
            }
            self.queue.pop();
            // The port may have been closed or rebound since: deliver only to a live port.
            if self
                .domains
                .get(&to)
                .and_then(|d| d.evt.get(port))
                .is_some()
            {
                self.set_pending(m, to, port);
                n += 1;
            } else {
                self.stats.events_stale += 1;
            }
        }
        n
    }

    /// `EVTCHNOP_*` for `caller`.
    pub(crate) fn event_op(
        &mut self,
        m: &Machine,
        caller: u16,
        op: xen_kmod::EventChannelOp<'_>,
    ) -> Result<(), XenError> {
        use xen_kmod::EventChannelOp as E;
        match op {
            E::AllocUnbound(a) => {
                let dom = self.target_dom(caller, a.dom)?;
                let remote = if a.remote_dom == xen_gnttab::v1::DOMID_SELF {
                    dom
                } else {
                    a.remote_dom
                };
                let d = self.domains.get_mut(&dom).ok_or(XenError::ESRCH)?;
                let p = d.evt.alloc()?;
                d.evt.set(p, PortState::Unbound { remote }, 0);
                a.port = p;
                Ok(())
            }
            E::BindInterdomain(b) => {
                let rdom = if b.remote_dom == xen_gnttab::v1::DOMID_SELF {
                    caller
                } else {
                    b.remote_dom
                };
                let r = self
                    .domains
                    .get(&rdom)
                    .filter(|d| !d.dead)
                    .ok_or(XenError::ESRCH)?;
                match r.evt.get(b.remote_port) {
                    Some(Port {
                        state: PortState::Unbound { remote },
                        ..
                    }) if remote == caller => {}
                    _ => return Err(XenError::EINVAL),
                }
                let d = self.domains.get_mut(&caller).ok_or(XenError::ESRCH)?;
                let lport = d.evt.alloc()?;
                d.evt.set(
                    lport,
                    PortState::Interdomain {
                        remote: rdom,
                        port: b.remote_port,
                    },
                    0,
                );
                let rvcpu = self
                    .domains
                    .get(&rdom)
                    .and_then(|r| r.evt.get(b.remote_port))
                    .map_or(0, |p| p.vcpu);
                if let Some(r) = self.domains.get_mut(&rdom) {
                    r.evt.set(
                        b.remote_port,
                        PortState::Interdomain {
                            remote: caller,
                            port: lport,
                        },
                        rvcpu,
                    );
                }
                b.local_port = lport;
                // As Xen: notifications sent to the unbound remote port may have been lost,
                // so conservatively mark the new local port pending.
                self.set_pending(m, caller, lport);
                Ok(())
            }
            E::BindVirq(v) => {
                if v.virq >= abi::NR_VIRQS {
                    return Err(XenError::EINVAL);
                }
                let d = self.domains.get_mut(&caller).ok_or(XenError::ESRCH)?;
                if v.vcpu >= d.vcpus {
                    return Err(XenError::ENOENT);
                }
                if d.evt
                    .ports
                    .iter()
                    .any(|p| p.state == PortState::Virq(v.virq) && p.vcpu == v.vcpu)
                {
                    return Err(XenError::EEXIST);
                }
                let p = d.evt.alloc()?;
                d.evt.set(p, PortState::Virq(v.virq), v.vcpu);
                v.port = p;
                Ok(())
            }
            E::BindIpi(i) => {
                let d = self.domains.get_mut(&caller).ok_or(XenError::ESRCH)?;
                if i.vcpu >= d.vcpus {
                    return Err(XenError::ENOENT);
                }
                let p = d.evt.alloc()?;
                d.evt.set(p, PortState::Ipi, i.vcpu);
                i.port = p;
                Ok(())
            }
            E::Close(c) => self.close_port(m, caller, c.port, false),
            E::Send(s) => {
                let d = self.domains.get(&caller).ok_or(XenError::ESRCH)?;
                match d.evt.get(s.port).map(|p| p.state) {
                    Some(PortState::Interdomain { remote, port }) => {
                        self.notify(m, caller, remote, port);
                        Ok(())
                    }
                    Some(PortState::Ipi) => {
                        self.notify(m, caller, caller, s.port);
                        Ok(())
                    }
                    // Xen drops sends on an unbound port silently.
                    Some(PortState::Unbound { .. }) => Ok(()),
                    _ => Err(XenError::EINVAL),
                }
            }
            E::Status(s) => {
                let dom = self.target_dom(caller, s.dom)?;
                let d = self.domains.get(&dom).ok_or(XenError::ESRCH)?;
                if s.port >= NR_PORTS_2L {
                    return Err(XenError::EINVAL);
                }
                let port = d.evt.get(s.port);
                s.vcpu = port.map_or(0, |p| p.vcpu);
                s.status = match port.map(|p| p.state) {
                    None | Some(PortState::Free) => abi::EVTCHNSTAT_closed,
                    Some(PortState::Unbound { remote }) => {
                        s.u.unbound =
                            abi::evtchn_status__bindgen_ty_1__bindgen_ty_1 { dom: remote };
                        abi::EVTCHNSTAT_unbound
                    }
                    Some(PortState::Interdomain { remote, port }) => {
                        s.u.interdomain = abi::evtchn_status__bindgen_ty_1__bindgen_ty_2 {
                            dom: remote,
                            __bindgen_padding_0: [0; 2],
                            port,
                        };
                        abi::EVTCHNSTAT_interdomain
                    }
                    Some(PortState::Virq(v)) => {
                        s.u.virq = v;
                        abi::EVTCHNSTAT_virq
                    }
                    Some(PortState::Ipi) => abi::EVTCHNSTAT_ipi,
                };
                Ok(())
            }
            E::BindVcpu(b) => {
                let d = self.domains.get_mut(&caller).ok_or(XenError::ESRCH)?;
                if b.vcpu >= d.vcpus {
                    return Err(XenError::ENOENT);
                }
                let p = d.evt.get(b.port).ok_or(XenError::EINVAL)?;
                match p.state {
                    PortState::Ipi => Err(XenError::EINVAL),
                    state => {
                        d.evt.set(b.port, state, b.vcpu);
                        Ok(())
                    }
                }
            }
            E::Unmask(u) => {
                let d = self.domains.get(&caller).ok_or(XenError::ESRCH)?;
                let p = d.evt.get(u.port).ok_or(XenError::EINVAL)?;
                if d.fifo.is_some() {
                    self.fifo_unmask(m, caller, u.port, p.vcpu);
                    return Ok(());
                }
                let si = m.page(d.shared_info).ok_or(XenError::EFAULT)?;
                let (mw, mb) = bit(EVTCHN_MASK_OFFSET, u.port);
                let (pw, pb) = bit(EVTCHN_PENDING_OFFSET, u.port);
                let was_masked =
                    si.0.get(mw)
                        .is_some_and(|w| w.fetch_and(!mb, Ordering::SeqCst) & mb != 0);
                let pending =
                    si.0.get(pw)
                        .is_some_and(|w| w.load(Ordering::SeqCst) & pb != 0);
                if was_masked && pending {
                    self.mark_pending(m, caller, u.port, p.vcpu);
                }
                Ok(())
            }
            E::Reset(r) => {
                let dom = self.target_dom(caller, r.dom)?;
                self.close_all(m, dom, false);
                Ok(())
            }
            E::InitControl(c) => match self.cfg.fifo {
                FifoSupport::Refuse => Err(XenError::ENOSYS),
                FifoSupport::Supported => self.fifo_init_control(caller, c),
            },
            E::ExpandArray(e) => match self.cfg.fifo {
                FifoSupport::Refuse => Err(XenError::ENOSYS),
                FifoSupport::Supported => self.fifo_expand(caller, e.array_gfn),
            },
            E::SetPriority(p) => match self.cfg.fifo {
                FifoSupport::Refuse => Err(XenError::ENOSYS),
                FifoSupport::Supported => self.fifo_set_priority(caller, p.port, p.priority),
            },
        }
    }

    fn target_dom(&self, caller: u16, dom: u16) -> Result<u16, XenError> {
        let dom = if dom == xen_gnttab::v1::DOMID_SELF {
            caller
        } else {
            dom
        };
        let me = self.domains.get(&caller).ok_or(XenError::ESRCH)?;
        if dom != caller && !me.privileged {
            return Err(XenError::EPERM);
        }
        if !self.domains.contains_key(&dom) {
            return Err(XenError::ESRCH);
        }
        Ok(dom)
    }

    /// `EVTCHNOP_close`: the remote end of an interdomain port becomes unbound (and, when the
    /// closing domain is dying and the simulator is so configured, is notified).
    pub(crate) fn close_port(
        &mut self,
        m: &Machine,
        dom: u16,
        port: u32,
        notify_remote: bool,
    ) -> Result<(), XenError> {
        let d = self.domains.get(&dom).ok_or(XenError::ESRCH)?;
        let p = d.evt.get(port).ok_or(XenError::EINVAL)?;
        if let PortState::Interdomain {
            remote,
            port: rport,
        } = p.state
        {
            let rvcpu = self
                .domains
                .get(&remote)
                .and_then(|r| r.evt.get(rport))
                .map_or(0, |p| p.vcpu);
            let still_ours = self
                .domains
                .get(&remote)
                .and_then(|r| r.evt.get(rport))
                .is_some_and(|p| p.state == PortState::Interdomain { remote: dom, port });
            if still_ours {
                if let Some(r) = self.domains.get_mut(&remote) {
                    r.evt.set(rport, PortState::Unbound { remote: dom }, rvcpu);
                }
                if notify_remote {
                    self.set_pending(m, remote, rport);
                }
            }
        }
        self.clear_pending(m, dom, port);
        if let Some(d) = self.domains.get_mut(&dom) {
            d.evt.set(port, PortState::Free, 0);
        }
        Ok(())
    }

    pub(crate) fn close_all(&mut self, m: &Machine, dom: u16, notify_remote: bool) {
        let ports: Vec<u32> = self.domains.get(&dom).map_or_else(Vec::new, |d| {
            (1u32..)
                .zip(d.evt.ports.iter().skip(1))
                .filter(|(_, p)| p.state != PortState::Free)
                .map(|(i, _)| i)
                .collect()
        });
        for p in ports {
            let _ = self.close_port(m, dom, p, notify_remote);
        }
    }

    /// Raises `virq` on `vcpu` of `dom` (if bound).
    pub(crate) fn raise_virq(&mut self, m: &Machine, dom: u16, virq: u32, vcpu: u32) -> bool {
        let port = self.domains.get(&dom).and_then(|d| {
            d.evt
                .ports
                .iter()
                .position(|p| p.state == PortState::Virq(virq) && p.vcpu == vcpu)
        });
        match port.and_then(|p| u32::try_from(p).ok()) {
            Some(p) => {
                self.set_pending(m, dom, p);
                true
            }
            None => false,
        }
    }

    /// `VCPUOP_register_vcpu_info`.
    pub(crate) fn register_vcpu_info(
        &mut self,
        caller: u16,
        vcpu: u32,
        gfn: u64,
        offset: u32,
    ) -> Result<(), XenError> {
        let d = self.domains.get_mut(&caller).ok_or(XenError::ESRCH)?;
        if offset as usize + VCPU_INFO_SIZE > 4096 || offset % 8 != 0 {
            return Err(XenError::EINVAL);
        }
        let Some(Phys::Ram(mfn)) = d.physmap.get(gfn) else {
            return Err(XenError::EINVAL);
        };
        let slot = d
            .evt
            .vcpu_info
            .get_mut(vcpu as usize)
            .ok_or(XenError::ENOENT)?;
        *slot = Some((mfn, offset as usize));
        Ok(())
    }
}
