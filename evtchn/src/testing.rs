//! A small single-domain fake hypervisor for the unit tests: Xen's event-channel semantics
//! (2-level and FIFO delivery, `EVTCHNOP_unmask`, loopback inter-domain pairs), written from
//! the public headers' description. The multi-domain simulator lives in `tests/` (xensim).

extern crate std;

use core::cell::RefCell;
use core::mem::offset_of;
use core::sync::atomic::Ordering;
use std::vec::Vec;

use xen_kmod::shared::{AtomicWord, SharedInfo, VcpuInfo, BITS_PER_XEN_ULONG};
use xen_kmod::{
    EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp, XenError,
    XenVersionOp,
};
use xen_shmem::{Page, SharedMem};
use xen_sys::consts::EvtchnFifoWord;
use xen_sys::native::evtchn_fifo_control_block;

use crate::{Error, PageSource, Port};

pub const FIRST_GFN: u64 = 0x1000;
const PENDING: u32 = EvtchnFifoWord::PENDING.bits();
const MASKED: u32 = EvtchnFifoWord::MASKED.bits();
const LINKED: u32 = EvtchnFifoWord::LINKED.bits();
const LINK: u32 = EvtchnFifoWord::LINK.bits();

/// Memory of the fake domain: page 0 is `shared_info`, the rest are handed out as FIFO pages.
pub struct Memory {
    pub pages: Vec<Page>,
}

impl Memory {
    pub fn new(n: usize) -> Self {
        Memory {
            pages: (0..n).map(|_| Page::new()).collect(),
        }
    }
    pub fn shared(&self) -> SharedInfo<'_> {
        SharedInfo::new(SharedMem::from_pages(&self.pages[..1])).unwrap()
    }
    pub fn vcpu(&self, v: u32) -> VcpuInfo<'_> {
        self.shared().legacy_vcpu_info(v).unwrap()
    }
    fn page(&self, gfn: u64) -> Option<SharedMem<'_>> {
        let i = usize::try_from(gfn.checked_sub(FIRST_GFN)?).ok()?;
        self.pages
            .get(i)
            .map(|p| SharedMem::from_pages(core::slice::from_ref(p)))
    }
}

/// Hands out pages 1.. of a [`Memory`].
pub struct Pages<'a> {
    mem: &'a Memory,
    next: usize,
}

impl<'a> Pages<'a> {
    pub fn new(mem: &'a Memory) -> Self {
        Pages { mem, next: 1 }
    }
}

impl<'a> PageSource<'a> for Pages<'a> {
    fn alloc_page(&mut self) -> Result<(SharedMem<'a>, u64), Error> {
        let p = self.mem.pages.get(self.next).ok_or(Error::NoMemory)?;
        let gfn = FIRST_GFN + self.next as u64;
        self.next += 1;
        Ok((SharedMem::from_pages(core::slice::from_ref(p)), gfn))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Free,
    Unbound,
    Interdomain(Port),
    Virq(u32),
    Ipi,
}

#[derive(Clone, Copy, Debug)]
struct FPort {
    state: State,
    vcpu: u32,
    priority: u32,
}

#[derive(Default)]
struct Fifo {
    control: Vec<Option<u64>>,
    array: Vec<u64>,
    tails: Vec<[u32; 16]>,
}

#[derive(Default)]
pub struct Inner {
    ports: Vec<FPort>,
    fifo: Option<Fifo>,
    pub refuse_fifo: Option<XenError>,
    /// Return this port from the next bind instead of a real one (hostile hypervisor).
    pub next_port_override: Option<Port>,
    pub unmask_calls: u32,
    pub closed: Vec<Port>,
    pub close_attempts: Vec<Port>,
    pub sent: Vec<Port>,
}

/// The fake hypervisor of one domain.
pub struct FakeXen<'a> {
    pub mem: &'a Memory,
    pub inner: RefCell<Inner>,
}

impl<'a> FakeXen<'a> {
    pub fn new(mem: &'a Memory) -> Self {
        let inner = Inner {
            // Port 0 is reserved.
            ports: std::vec![FPort {
                state: State::Ipi,
                vcpu: 0,
                priority: 7
            }],
            ..Default::default()
        };
        FakeXen {
            mem,
            inner: RefCell::new(inner),
        }
    }

    pub fn refusing_fifo(mem: &'a Memory, e: XenError) -> Self {
        let x = Self::new(mem);
        x.inner.borrow_mut().refuse_fifo = Some(e);
        x
    }

    /// Allocates a port in state `state` (as Xen's `get_free_port`).
    fn alloc(&self, state: State, vcpu: u32) -> Port {
        let mut i = self.inner.borrow_mut();
        if let Some(p) = i.next_port_override.take() {
            return p;
        }
        let idx = i
            .ports
            .iter()
            .position(|p| p.state == State::Free)
            .unwrap_or(i.ports.len());
        let fp = FPort {
            state,
            vcpu,
            priority: 7,
        };
        if idx == i.ports.len() {
            i.ports.push(fp);
        } else {
            i.ports[idx] = fp;
        }
        Port::try_from(idx).unwrap()
    }

    /// Creates a port bound to nothing in particular (e.g. the toolstack's xenstore port).
    pub fn preallocate(&self) -> Port {
        self.alloc(State::Unbound, 0)
    }

    fn word(&self, port: Port) -> Option<AtomicWord<'a>> {
        let i = self.inner.borrow();
        let f = i.fifo.as_ref()?;
        let gfn = *f.array.get((port / 1024) as usize)?;
        let page = self.mem.page(gfn)?;
        AtomicWord::at(&page, (port % 1024) as usize * 4).ok()
    }

    fn control(&self, vcpu: u32) -> Option<SharedMem<'a>> {
        let i = self.inner.borrow();
        let gfn = (*i.fifo.as_ref()?.control.get(vcpu as usize)?)?;
        self.mem.page(gfn)
    }

    /// Raises `port` as Xen's `evtchn_set_pending` does.
    pub fn raise(&self, port: Port) {
        let Some(fp) = self.inner.borrow().ports.get(port as usize).copied() else {
            return;
        };
        if self.inner.borrow().fifo.is_some() {
            self.fifo_set_pending(port, fp);
        } else {
            let si = self.mem.shared();
            if si.evtchn_pending().test_and_set(port) == Some(true) {
                return;
            }
            if si.evtchn_mask().test(port) == Some(false) {
                let v = self.mem.vcpu(fp.vcpu);
                if !v.set_pending_sel_bit(port / BITS_PER_XEN_ULONG) {
                    v.set_upcall_pending();
                }
            }
        }
    }

    fn fifo_set_pending(&self, port: Port, fp: FPort) {
        let Some(w) = self.word(port) else { return };
        w.fetch_or(PENDING, Ordering::SeqCst);
        if w.load(Ordering::SeqCst) & MASKED != 0 {
            return;
        }
        if w.fetch_or(LINKED, Ordering::SeqCst) & LINKED != 0 {
            return;
        }
        let q = fp.priority as usize;
        let tail = {
            let mut i = self.inner.borrow_mut();
            let f = i.fifo.as_mut().unwrap();
            while f.tails.len() <= fp.vcpu as usize {
                f.tails.push([0; 16]);
            }
            f.tails[fp.vcpu as usize][q]
        };
        let mut linked = false;
        if tail != 0 {
            if let Some(tw) = self.word(tail) {
                let mut cur = tw.load(Ordering::SeqCst);
                while cur & LINKED != 0 {
                    match tw.compare_exchange(cur, (cur & !LINK) | port) {
                        Ok(_) => {
                            linked = true;
                            break;
                        }
                        Err(now) => cur = now,
                    }
                }
            }
        }
        let Some(cb) = self.control(fp.vcpu) else {
            return;
        };
        if !linked {
            cb.store_release_u32(offset_of!(evtchn_fifo_control_block, head) + q * 4, port)
                .unwrap();
        }
        self.inner.borrow_mut().fifo.as_mut().unwrap().tails[fp.vcpu as usize][q] = port;
        let ready = AtomicWord::at(&cb, offset_of!(evtchn_fifo_control_block, ready)).unwrap();
        if ready.fetch_or(1 << q, Ordering::SeqCst) & (1 << q) == 0 {
            self.mem.vcpu(fp.vcpu).set_upcall_pending();
        }
    }

    pub fn state(&self, port: Port) -> Option<State> {
        self.inner
            .borrow()
            .ports
            .get(port as usize)
            .map(|p| p.state)
    }

    pub fn vcpu_of(&self, port: Port) -> Option<u32> {
        self.inner.borrow().ports.get(port as usize).map(|p| p.vcpu)
    }

    fn valid(&self, port: Port) -> Result<FPort, XenError> {
        match self.inner.borrow().ports.get(port as usize) {
            Some(p) if p.state != State::Free && port != 0 => Ok(*p),
            _ => Err(XenError::EINVAL),
        }
    }
}

impl Hypervisor for FakeXen<'_> {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        match op {
            EventChannelOp::AllocUnbound(a) => a.port = self.alloc(State::Unbound, 0),
            EventChannelOp::BindInterdomain(a) => {
                // Loopback only: the remote port is one of ours, in state Unbound.
                let remote = a.remote_port;
                if self.valid(remote)?.state != State::Unbound {
                    return Err(XenError::EINVAL);
                }
                let local = self.alloc(State::Interdomain(remote), 0);
                a.local_port = local;
                if let Some(r) = self.inner.borrow_mut().ports.get_mut(remote as usize) {
                    r.state = State::Interdomain(local);
                }
            }
            EventChannelOp::BindVirq(a) => {
                if a.virq >= 24 {
                    return Err(XenError::EINVAL);
                }
                a.port = self.alloc(State::Virq(a.virq), a.vcpu);
            }
            EventChannelOp::BindIpi(a) => a.port = self.alloc(State::Ipi, a.vcpu),
            EventChannelOp::Close(a) => {
                self.inner.borrow_mut().close_attempts.push(a.port);
                let p = self.valid(a.port)?;
                let mut i = self.inner.borrow_mut();
                if let State::Interdomain(peer) = p.state {
                    if let Some(r) = i.ports.get_mut(peer as usize) {
                        r.state = State::Unbound;
                    }
                }
                i.ports[a.port as usize].state = State::Free;
                i.closed.push(a.port);
            }
            EventChannelOp::Send(a) => {
                let p = self.valid(a.port)?;
                self.inner.borrow_mut().sent.push(a.port);
                match p.state {
                    State::Interdomain(peer) => self.raise(peer),
                    State::Ipi => self.raise(a.port),
                    _ => {}
                }
            }
            EventChannelOp::Unmask(a) => {
                self.valid(a.port)?;
                self.inner.borrow_mut().unmask_calls += 1;
                let port = a.port;
                let vcpu = self.vcpu_of(port).unwrap_or(0);
                if self.inner.borrow().fifo.is_some() {
                    if let Some(w) = self.word(port) {
                        w.fetch_and(!MASKED, Ordering::SeqCst);
                        if w.load(Ordering::SeqCst) & PENDING != 0 {
                            let fp = self.valid(port)?;
                            self.fifo_set_pending(port, fp);
                        }
                    }
                } else {
                    let si = self.mem.shared();
                    if si.evtchn_mask().test_and_clear(port) == Some(true)
                        && si.evtchn_pending().test(port) == Some(true)
                    {
                        let v = self.mem.vcpu(vcpu);
                        if !v.set_pending_sel_bit(port / BITS_PER_XEN_ULONG) {
                            v.set_upcall_pending();
                        }
                    }
                }
            }
            EventChannelOp::BindVcpu(a) => {
                self.valid(a.port)?;
                self.inner.borrow_mut().ports[a.port as usize].vcpu = a.vcpu;
            }
            EventChannelOp::SetPriority(a) => {
                self.valid(a.port)?;
                if self.inner.borrow().fifo.is_none() {
                    return Err(XenError::ENOSYS);
                }
                self.inner.borrow_mut().ports[a.port as usize].priority = a.priority;
            }
            EventChannelOp::InitControl(a) => {
                if let Some(e) = self.inner.borrow().refuse_fifo {
                    return Err(e);
                }
                self.mem.page(a.control_gfn).ok_or(XenError::EINVAL)?;
                let mut i = self.inner.borrow_mut();
                let f = i.fifo.get_or_insert_with(Fifo::default);
                while f.control.len() <= a.vcpu as usize {
                    f.control.push(None);
                }
                f.control[a.vcpu as usize] = Some(a.control_gfn);
                a.link_bits = 17;
            }
            EventChannelOp::ExpandArray(a) => {
                self.mem.page(a.array_gfn).ok_or(XenError::EINVAL)?;
                let mut i = self.inner.borrow_mut();
                let f = i.fifo.as_mut().ok_or(XenError::EINVAL)?;
                f.array.push(a.array_gfn);
            }
            EventChannelOp::Status(_) | EventChannelOp::Reset(_) => return Err(XenError::ENOSYS),
        }
        Ok(())
    }
    fn grant_table_op(&self, _: GrantTableOp<'_>) -> Result<(), XenError> {
        Err(XenError::ENOSYS)
    }
    fn memory_op(&self, _: MemoryOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
    fn hvm_op(&self, _: HvmOp<'_>) -> Result<(), XenError> {
        Err(XenError::ENOSYS)
    }
    fn sched_op(&self, _: SchedOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
    fn vcpu_op(&self, _: u32, _: VcpuOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
    fn xen_version(&self, _: XenVersionOp<'_>) -> Result<u64, XenError> {
        Err(XenError::ENOSYS)
    }
}
