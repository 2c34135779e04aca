//! [`EventChannels`]: binding, the port table, mask/unmask, notify, and the upcall scan over
//! either ABI.

use alloc::vec::Vec;

use xen_kmod::shared::{SharedInfo, VcpuInfo};
use xen_kmod::{Hypervisor, HypervisorExt, XenError};
use xen_sys::consts::evtchn::{EVTCHN_FIFO_NR_CHANNELS, EVTCHN_FIFO_PRIORITY_MIN};
use xen_sys::consts::Virq;
use xen_sys::native::domid_t;

use crate::fifo::{self, Fifo, FifoVcpu};
use crate::table::{PortTable, Slot, MASK_THROTTLE, MASK_USER};
use crate::throttle::{self, ThrottleConfig};
use crate::twolevel::{self, Cursor, Handled, TwoLevel};
use crate::{BindOptions, Error, Event, PageSource, PollOutcome, Port, PortStats, Stats, Token};

/// Which ABI is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// 2-level bitmaps in `shared_info` (every Xen; 4096 ports on amd64, 1024 on i386).
    TwoLevel,
    /// FIFO queues (Xen 4.4+; up to 2^17 ports, 16 priorities).
    Fifo,
}

/// Which ABI to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbiChoice {
    /// FIFO if Xen accepts `EVTCHNOP_init_control`, else 2-level.
    PreferFifo,
    /// 2-level only.
    TwoLevel,
}

/// Configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// ABI preference.
    pub abi: AbiChoice,
    /// Highest vCPU id + 1 that will be registered.
    pub max_vcpus: u32,
    /// Upper bound on port numbers this instance will track (the table never grows beyond it;
    /// a hypervisor returning a larger port gets it closed again). Clamped to the ABI limit.
    pub max_ports: u32,
    /// The storm throttle.
    pub throttle: ThrottleConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            abi: AbiChoice::PreferFifo,
            max_vcpus: 1,
            max_ports: 16384,
            throttle: ThrottleConfig::default(),
        }
    }
}

/// What a port is connected to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortKind {
    /// Allocated for `remote` to bind to (`EVTCHNOP_alloc_unbound`).
    Unbound {
        /// The domain allowed to connect.
        remote: domid_t,
    },
    /// Connected to `remote`'s port `remote_port`.
    Interdomain {
        /// The peer domain.
        remote: domid_t,
        /// The peer's port.
        remote_port: Port,
    },
    /// A virtual IRQ.
    Virq(Virq),
    /// An inter-processor notification.
    Ipi,
    /// A port set up by someone else (the toolstack: xenstore, console) and handed to us, e.g.
    /// through an HVM parameter. Closing it only forgets it: the port is not ours to close.
    Adopted,
}

impl PortKind {
    /// Whether another domain can raise this port.
    #[must_use]
    pub fn peer_raisable(self) -> bool {
        matches!(
            self,
            PortKind::Unbound { .. } | PortKind::Interdomain { .. } | PortKind::Adopted
        )
    }
}

/// Per-vCPU state.
#[derive(Debug)]
struct Vcpu<'a> {
    info: Option<VcpuInfo<'a>>,
    l2: Cursor,
    fifo: Option<FifoVcpu<'a>>,
}

enum AbiState<'a> {
    TwoLevel(TwoLevel<'a>),
    Fifo(Fifo<'a>),
}

/// The event-channel core (see the crate docs).
pub struct EventChannels<'a, H: Hypervisor, P: PageSource<'a>> {
    hv: H,
    pages: P,
    abi: AbiState<'a>,
    /// The 2-level bitmaps, used for ABI-independent masking of ports before FIFO is up.
    vcpus: Vec<Vcpu<'a>>,
    table: PortTable,
    throttle: ThrottleConfig,
    /// Ports currently masked by the throttle (bounded by the table size).
    throttled: Vec<Port>,
    /// Round-robin start of [`EventChannels::poll_all`].
    next_vcpu: u32,
    fifo_refused: Option<XenError>,
    stats: Stats,
}

impl<'a, H: Hypervisor, P: PageSource<'a>> core::fmt::Debug for EventChannels<'a, H, P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("EventChannels")
            .field("abi", &self.abi())
            .field("bound", &self.table.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<'a, H: Hypervisor, P: PageSource<'a>> EventChannels<'a, H, P> {
    /// Sets up event channels for a domain whose `shared_info` is `shared` and whose vCPU 0
    /// has `vcpu0` as its `vcpu_info`.
    ///
    /// With [`AbiChoice::PreferFifo`], registers vCPU 0's FIFO control block and the first
    /// event-array page; if Xen refuses `EVTCHNOP_init_control` (e.g. `ENOSYS` from hosts
    /// without FIFO, or from QEMU's Xen emulation), falls back to 2-level and remembers why
    /// ([`EventChannels::fifo_refused`]). In 2-level mode every port is masked first, so only
    /// ports bound here are ever delivered.
    ///
    /// # Errors
    /// A page could not be obtained, or FIFO was accepted but its first event-array page was
    /// refused (the domain is then in FIFO mode without usable queues: fatal).
    pub fn new(
        hv: H,
        mut pages: P,
        shared: SharedInfo<'a>,
        vcpu0: VcpuInfo<'a>,
        config: Config,
    ) -> Result<Self, Error> {
        let max_vcpus = config.max_vcpus.max(1);
        let mut vcpus = Vec::new();
        vcpus
            .try_reserve(max_vcpus as usize)
            .map_err(|_| Error::NoMemory)?;
        for _ in 0..max_vcpus {
            vcpus.push(Vcpu {
                info: None,
                l2: Cursor::new(),
                fifo: None,
            });
        }
        let mut fifo_refused = None;
        let mut abi = None;
        if config.abi == AbiChoice::PreferFifo {
            let (control, gfn) = pages.alloc_page()?;
            match hv.evtchn_init_control(gfn, 0, 0) {
                Ok(_link_bits) => {
                    let mut f = Fifo::new();
                    let (page, pgfn) = pages.alloc_page()?;
                    f.add_page(&hv, page, pgfn)?;
                    vcpus[0].fifo = Some(FifoVcpu::new(control)?);
                    abi = Some(AbiState::Fifo(f));
                }
                Err(e) => fifo_refused = Some(e),
            }
        }
        let abi = match abi {
            Some(a) => a,
            None => {
                let l2 = TwoLevel::new(&shared);
                l2.mask_all();
                AbiState::TwoLevel(l2)
            }
        };
        let limit = match abi {
            AbiState::TwoLevel(_) => TwoLevel::nr_channels(),
            AbiState::Fifo(_) => EVTCHN_FIFO_NR_CHANNELS,
        };
        vcpus[0].info = Some(vcpu0);
        Ok(EventChannels {
            hv,
            pages,
            abi,
            vcpus,
            table: PortTable::new(config.max_ports.min(limit)),
            throttle: config.throttle,
            throttled: Vec::new(),
            next_vcpu: 0,
            fifo_refused,
            stats: Stats::default(),
        })
    }

    /// The ABI in use.
    #[must_use]
    pub fn abi(&self) -> Abi {
        match self.abi {
            AbiState::TwoLevel(_) => Abi::TwoLevel,
            AbiState::Fifo(_) => Abi::Fifo,
        }
    }

    /// Why FIFO was refused, when we fell back to 2-level.
    #[must_use]
    pub fn fifo_refused(&self) -> Option<XenError> {
        self.fifo_refused
    }

    /// The hypervisor handle.
    pub fn hypervisor(&self) -> &H {
        &self.hv
    }

    /// Core-wide counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Statistics of a bound port.
    #[must_use]
    pub fn port_stats(&self, port: Port) -> Option<PortStats> {
        self.table.get(port).map(|s| s.stats)
    }

    /// The token and kind of a bound port.
    #[must_use]
    pub fn lookup(&self, port: Port) -> Option<(Token, PortKind, u32)> {
        self.table.get(port).map(|s| (s.token, s.kind, s.vcpu))
    }

    /// Number of bound ports.
    #[must_use]
    pub fn bound(&self) -> usize {
        self.table.len()
    }

    /// Registers vCPU `vcpu` (> 0) with its `vcpu_info` view; under FIFO also gives Xen its
    /// control block. Must precede binding ports to that vCPU.
    ///
    /// # Errors
    /// [`Error::InvalidVcpu`] beyond `max_vcpus`; page or hypercall failures.
    pub fn add_vcpu(&mut self, vcpu: u32, info: VcpuInfo<'a>) -> Result<(), Error> {
        let fifo = matches!(self.abi, AbiState::Fifo(_));
        let slot = self
            .vcpus
            .get_mut(vcpu as usize)
            .ok_or(Error::InvalidVcpu(vcpu))?;
        if fifo && slot.fifo.is_none() {
            let (control, gfn) = self.pages.alloc_page()?;
            self.hv.evtchn_init_control(gfn, 0, vcpu)?;
            slot.fifo = Some(FifoVcpu::new(control)?);
        }
        slot.info = Some(info);
        Ok(())
    }

    fn vcpu_ready(&self, vcpu: u32) -> Result<(), Error> {
        match self.vcpus.get(vcpu as usize) {
            Some(v) if v.info.is_some() => Ok(()),
            _ => Err(Error::InvalidVcpu(vcpu)),
        }
    }

    // ---- binding -------------------------------------------------------------------------

    /// `EVTCHNOP_alloc_unbound`: a port `remote` may connect to. Delivered to vCPU 0.
    ///
    /// # Errors
    /// Hypercall failure; a port Xen returns that cannot be tracked (closed again).
    pub fn alloc_unbound(&mut self, remote: domid_t, opts: BindOptions) -> Result<Port, Error> {
        let port = self.hv.evtchn_alloc_unbound(remote)?;
        self.register(port, PortKind::Unbound { remote }, 0, opts, true)
    }

    /// `EVTCHNOP_bind_interdomain` to `remote:remote_port`. Delivered to vCPU 0.
    ///
    /// # Errors
    /// Hypercall failure; a port Xen returns that cannot be tracked (closed again).
    pub fn bind_interdomain(
        &mut self,
        remote: domid_t,
        remote_port: Port,
        opts: BindOptions,
    ) -> Result<Port, Error> {
        let port = self.hv.evtchn_bind_interdomain(remote, remote_port)?;
        self.register(
            port,
            PortKind::Interdomain {
                remote,
                remote_port,
            },
            0,
            opts,
            true,
        )
    }

    /// `EVTCHNOP_bind_virq` of `virq` on `vcpu`.
    ///
    /// # Errors
    /// Unknown vCPU; hypercall failure; an untrackable port (closed again).
    pub fn bind_virq(&mut self, virq: Virq, vcpu: u32, opts: BindOptions) -> Result<Port, Error> {
        self.vcpu_ready(vcpu)?;
        let port = self.hv.evtchn_bind_virq(virq.value(), vcpu)?;
        self.register(port, PortKind::Virq(virq), vcpu, opts, true)
    }

    /// `EVTCHNOP_bind_ipi` on `vcpu`.
    ///
    /// # Errors
    /// Unknown vCPU; hypercall failure; an untrackable port (closed again).
    pub fn bind_ipi(&mut self, vcpu: u32, opts: BindOptions) -> Result<Port, Error> {
        self.vcpu_ready(vcpu)?;
        let port = self.hv.evtchn_bind_ipi(vcpu)?;
        self.register(port, PortKind::Ipi, vcpu, opts, true)
    }

    /// Tracks a port that already exists (xenstore's or the console's, from HVM parameters),
    /// delivered to vCPU 0. [`EventChannels::close`] will not close it at Xen.
    ///
    /// # Errors
    /// A port out of range or already bound.
    pub fn adopt(&mut self, port: Port, opts: BindOptions) -> Result<Port, Error> {
        self.check_port(port)?;
        self.register(port, PortKind::Adopted, 0, opts, false)
    }

    fn check_port(&self, port: Port) -> Result<Port, Error> {
        match self.abi {
            AbiState::TwoLevel(_) => twolevel::check_port(port).and_then(|p| {
                if p == 0 {
                    Err(Error::PortOutOfRange(p))
                } else {
                    Ok(p)
                }
            }),
            AbiState::Fifo(_) => fifo::check_port(port),
        }
    }

    /// Common tail of every bind: validate the port, back it (FIFO array), record it, unmask.
    /// On any failure a port we created is closed again, so nothing leaks at Xen.
    fn register(
        &mut self,
        port: Port,
        kind: PortKind,
        vcpu: u32,
        opts: BindOptions,
        close_on_error: bool,
    ) -> Result<Port, Error> {
        match self.try_register(port, kind, vcpu, opts) {
            Ok(()) => Ok(port),
            Err(e) => {
                // A port Xen gave us but we cannot track: give it back, so nothing leaks at Xen.
                // A port already in the table (Xen handed out a port we believe bound: our
                // state and Xen's disagree) is left alone: closing it would break the existing
                // binding; the error reports the inconsistency.
                if close_on_error && !matches!(e, Error::PortInUse(_)) {
                    let _ = self.hv.evtchn_close(port);
                }
                Err(e)
            }
        }
    }

    fn try_register(
        &mut self,
        port: Port,
        kind: PortKind,
        vcpu: u32,
        opts: BindOptions,
    ) -> Result<(), Error> {
        self.check_port(port)?;
        if self.table.contains(port) {
            return Err(Error::PortInUse(port));
        }
        self.table.reserve_for(port)?;
        if let AbiState::Fifo(f) = &mut self.abi {
            while port >= f.capacity() {
                let (page, gfn) = self.pages.alloc_page()?;
                f.add_page(&self.hv, page, gfn)?;
            }
        }
        let slot = Slot {
            kind,
            vcpu,
            token: opts.token,
            auto_mask: opts.auto_mask,
            throttle: opts.throttle.unwrap_or(kind.peer_raisable()),
            mask: if opts.start_masked { MASK_USER } else { 0 },
            window_start: 0,
            window_count: 0,
            deferred_until: 0,
            stats: PortStats::default(),
        };
        // Keep room to record every port as throttled, so the upcall path never allocates.
        let need = self.table.len() + 1;
        if self.throttled.capacity() < need {
            self.throttled
                .try_reserve(need - self.throttled.len())
                .map_err(|_| Error::NoMemory)?;
        }
        self.table.insert(port, slot)?;
        if let Some(v) = self.vcpus.get_mut(vcpu as usize) {
            v.l2.set_owned(port, true);
        }
        if opts.start_masked {
            self.hw_mask(port);
        } else {
            self.hw_unmask(port)?;
        }
        Ok(())
    }

    /// Unbinds `port`: masks it, forgets it, and closes it at Xen (except adopted ports).
    /// The table entry is removed even if the close hypercall fails (the error is returned):
    /// after `close` the port never delivers to its old token.
    ///
    /// # Errors
    /// [`Error::NotBound`]; the close hypercall's failure.
    pub fn close(&mut self, port: Port) -> Result<(), Error> {
        let slot = self.table.remove(port).ok_or(Error::NotBound(port))?;
        self.hw_mask(port);
        self.clear_pending(port);
        if let Some(v) = self.vcpus.get_mut(slot.vcpu as usize) {
            v.l2.set_owned(port, false);
        }
        self.throttled.retain(|&p| p != port);
        if slot.kind != PortKind::Adopted {
            self.hv.evtchn_close(port)?;
        }
        Ok(())
    }

    /// `EVTCHNOP_send` on a bound port.
    ///
    /// # Errors
    /// [`Error::NotBound`]; the hypercall's failure.
    pub fn notify(&self, port: Port) -> Result<(), Error> {
        if !self.table.contains(port) {
            return Err(Error::NotBound(port));
        }
        Ok(self.hv.evtchn_send(port)?)
    }

    /// Masks a bound port (until [`EventChannels::unmask`]).
    ///
    /// # Errors
    /// [`Error::NotBound`].
    pub fn mask(&mut self, port: Port) -> Result<(), Error> {
        let slot = self.table.get_mut(port).ok_or(Error::NotBound(port))?;
        slot.mask |= MASK_USER;
        self.hw_mask(port);
        Ok(())
    }

    /// Unmasks a bound port (also the acknowledgement of an `auto_mask` port). Any event that
    /// arrived while masked is delivered. A port still throttled stays masked until the
    /// throttle expires.
    ///
    /// # Errors
    /// [`Error::NotBound`]; the unmask hypercall's failure.
    pub fn unmask(&mut self, port: Port) -> Result<(), Error> {
        let slot = self.table.get_mut(port).ok_or(Error::NotBound(port))?;
        slot.mask &= !MASK_USER;
        if slot.mask == 0 {
            self.hw_unmask(port)?;
        }
        Ok(())
    }

    /// Routes `port`'s upcalls to `vcpu` (`EVTCHNOP_bind_vcpu`). Xen allows this for
    /// inter-domain, unbound and global VIRQ ports.
    ///
    /// # Errors
    /// [`Error::NotBound`], an unknown vCPU, Xen's refusal.
    pub fn bind_vcpu(&mut self, port: Port, vcpu: u32) -> Result<(), Error> {
        self.vcpu_ready(vcpu)?;
        let old = self.table.get(port).ok_or(Error::NotBound(port))?.vcpu;
        if old == vcpu {
            return Ok(());
        }
        // Masked across the move so no event is raised to a vCPU that no longer scans for it;
        // the unmask afterwards re-raises anything that arrived meanwhile on the new vCPU.
        self.hw_mask(port);
        let r = self.hv.evtchn_bind_vcpu(port, vcpu);
        if r.is_ok() {
            if let Some(v) = self.vcpus.get_mut(old as usize) {
                v.l2.set_owned(port, false);
            }
            if let Some(v) = self.vcpus.get_mut(vcpu as usize) {
                v.l2.set_owned(port, true);
            }
            if let Some(s) = self.table.get_mut(port) {
                s.vcpu = vcpu;
            }
        }
        if self.table.get(port).is_some_and(|s| s.mask == 0) {
            self.hw_unmask(port)?;
        }
        Ok(r?)
    }

    /// FIFO priority of a port (0 highest, 15 lowest).
    ///
    /// # Errors
    /// [`Error::Unsupported`] under 2-level; [`Error::InvalidArgument`] for a priority above
    /// 15; [`Error::NotBound`]; Xen's refusal.
    pub fn set_priority(&mut self, port: Port, priority: u32) -> Result<(), Error> {
        if !matches!(self.abi, AbiState::Fifo(_)) {
            return Err(Error::Unsupported);
        }
        if priority > EVTCHN_FIFO_PRIORITY_MIN {
            return Err(Error::InvalidArgument);
        }
        if !self.table.contains(port) {
            return Err(Error::NotBound(port));
        }
        Ok(self.hv.evtchn_set_priority(port, priority)?)
    }

    /// Whether the port is masked in the shared structures (for diagnostics and tests).
    #[must_use]
    pub fn is_masked(&self, port: Port) -> bool {
        match &self.abi {
            AbiState::TwoLevel(l2) => l2.is_masked(port),
            AbiState::Fifo(f) => f.is_masked(port),
        }
    }

    /// Whether the port is pending in the shared structures.
    #[must_use]
    pub fn is_pending(&self, port: Port) -> bool {
        match &self.abi {
            AbiState::TwoLevel(l2) => l2.is_pending(port),
            AbiState::Fifo(f) => f.is_pending(port),
        }
    }

    fn hw_mask(&self, port: Port) {
        match &self.abi {
            AbiState::TwoLevel(l2) => l2.mask(port),
            AbiState::Fifo(f) => f.mask(port),
        }
    }

    fn hw_unmask(&self, port: Port) -> Result<(), Error> {
        match &self.abi {
            AbiState::TwoLevel(l2) => l2.unmask(&self.hv, port),
            AbiState::Fifo(f) => f.unmask(&self.hv, port),
        }
    }

    fn clear_pending(&self, port: Port) {
        match &self.abi {
            AbiState::TwoLevel(l2) => l2.clear_pending(port),
            AbiState::Fifo(f) => f.clear_pending(port),
        }
    }

    // ---- upcall --------------------------------------------------------------------------

    /// Processes vCPU `vcpu`'s pending events: writes up to `out.len()` events to `out` and
    /// returns how many, and whether more remain. Call with the vCPU's upcalls disabled (from
    /// its upcall handler). `now` feeds the throttle and lifts expired throttles first.
    ///
    /// # Errors
    /// [`Error::InvalidVcpu`] for a vCPU without `vcpu_info`.
    pub fn poll(&mut self, vcpu: u32, now: u64, out: &mut [Event]) -> Result<PollOutcome, Error> {
        self.tick(now);
        let Self {
            abi,
            vcpus,
            table,
            throttle,
            throttled,
            stats,
            ..
        } = self;
        let v = vcpus
            .get_mut(vcpu as usize)
            .ok_or(Error::InvalidVcpu(vcpu))?;
        let info = v.info.ok_or(Error::InvalidVcpu(vcpu))?;
        // Clear the upcall flag *before* looking: an event raised after this point raises a new
        // upcall, so nothing is lost between our scan and the next interrupt.
        info.clear_upcall_pending();
        let mut n = 0usize;
        let budget = out.len();
        let mut deliver =
            |port: Port, take: &dyn Fn(Port) -> bool, mask: &dyn Fn(Port)| -> Handled {
                let Some(slot) = table.get_mut(port) else {
                    // Pending but not ours: mask it so it cannot keep firing, and count it.
                    take(port);
                    mask(port);
                    stats.spurious += 1;
                    return Handled::Nothing;
                };
                if !take(port) {
                    return Handled::Nothing;
                }
                slot.stats.delivered += 1;
                if let Some(e) = out.get_mut(n) {
                    *e = Event {
                        port,
                        token: slot.token,
                    };
                    n += 1;
                }
                if slot.auto_mask {
                    slot.mask |= MASK_USER;
                    mask(port);
                }
                // Capacity for every bound port was reserved at bind time, so recording a throttled
                // port never allocates here; the length check only guards that invariant.
                if slot.mask & MASK_THROTTLE == 0
                    && throttled.len() < throttled.capacity()
                    && throttle::count(throttle, slot, now)
                {
                    slot.mask |= MASK_THROTTLE;
                    mask(port);
                    throttled.push(port);
                    stats.throttled += 1;
                }
                Handled::Delivered
            };
        let more = match abi {
            AbiState::TwoLevel(l2) => {
                let l2c = *l2;
                l2.scan(&mut v.l2, &info, budget, |p| {
                    deliver(p, &|q| l2c.take_pending(q), &|q| l2c.mask(q))
                })
            }
            AbiState::Fifo(f) => match v.fifo.as_mut() {
                Some(fv) => {
                    let mut bad = 0;
                    let f: &Fifo<'a> = f;
                    let more = f.scan(fv, budget, &mut bad, |p| {
                        deliver(p, &|q| f.take_pending(q), &|q| f.mask(q))
                    });
                    stats.bad_links += bad;
                    more
                }
                None => false,
            },
        };
        if more {
            stats.budget_exhausted += 1;
        }
        Ok(PollOutcome { delivered: n, more })
    }

    /// Polls every registered vCPU in turn, starting after the one served first last time, each
    /// with an equal share of `out` (for single-CPU simulation and tests; an SMP kernel polls
    /// each vCPU on its own CPU).
    ///
    /// # Errors
    /// None in practice (only registered vCPUs are polled).
    pub fn poll_all(&mut self, now: u64, out: &mut [Event]) -> Result<PollOutcome, Error> {
        let ids: Vec<u32> = (0..self.vcpus.len())
            .filter(|&i| self.vcpus[i].info.is_some())
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        if ids.is_empty() || out.is_empty() {
            return Ok(PollOutcome {
                delivered: 0,
                more: !ids.is_empty(),
            });
        }
        let share = (out.len() / ids.len()).max(1);
        let start = ids.iter().position(|&v| v >= self.next_vcpu).unwrap_or(0);
        let mut total = PollOutcome::default();
        for k in 0..ids.len() {
            let vcpu = ids[(start + k) % ids.len()];
            let end = (total.delivered + share).min(out.len());
            let r = self.poll(vcpu, now, &mut out[total.delivered..end])?;
            total.delivered += r.delivered;
            total.more |= r.more;
            if total.delivered >= out.len() {
                total.more |= k + 1 < ids.len();
                break;
            }
        }
        self.next_vcpu = ids[(start + 1) % ids.len()];
        Ok(total)
    }

    /// Lifts throttles that expired by `now` (unmasking the ports unless something else keeps
    /// them masked); returns how many. Call it periodically, e.g. at
    /// [`EventChannels::next_deadline`]; `poll` calls it too.
    pub fn tick(&mut self, now: u64) -> usize {
        let mut lifted = 0;
        let mut i = 0;
        while i < self.throttled.len() {
            let port = self.throttled[i];
            let due = self.table.get(port).is_none_or(|s| s.deferred_until <= now);
            if !due {
                i += 1;
                continue;
            }
            let Some(slot) = self.table.get_mut(port) else {
                // Closed meanwhile.
                self.throttled.swap_remove(i);
                continue;
            };
            let others = slot.mask & !MASK_THROTTLE;
            if others == 0 && self.hw_unmask(port).is_err() {
                // The unmask hypercall failed: stay throttled and retry one period later.
                if let Some(slot) = self.table.get_mut(port) {
                    slot.deferred_until = now.saturating_add(self.throttle.defer_ns);
                }
                i += 1;
                continue;
            }
            if let Some(slot) = self.table.get_mut(port) {
                slot.mask = others;
            }
            self.throttled.swap_remove(i);
            lifted += 1;
        }
        lifted
    }

    /// The earliest time at which [`EventChannels::tick`] has work, if any port is throttled.
    #[must_use]
    pub fn next_deadline(&self) -> Option<u64> {
        self.throttled
            .iter()
            .filter_map(|&p| self.table.get(p).map(|s| s.deferred_until))
            .min()
    }

    /// Whether a port is currently throttled.
    #[must_use]
    pub fn is_throttled(&self, port: Port) -> bool {
        self.table
            .get(port)
            .is_some_and(|s| s.mask & MASK_THROTTLE != 0)
    }

    /// Bound ports, ascending.
    pub fn ports(&self) -> impl Iterator<Item = Port> + '_ {
        self.table.ports()
    }

    #[cfg(test)]
    pub(crate) fn l2_position(&self, vcpu: u32) -> Option<(u32, u32)> {
        self.vcpus.get(vcpu as usize).map(|v| v.l2.position())
    }
}
