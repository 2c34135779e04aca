//! Event delivery by interrupt, through xen-evtchn: `EventChannels` (FIFO ABI when Xen accepts
//! `EVTCHNOP_init_control`, else 2-level) with `HVMOP_set_evtchn_upcall_vector`, an IDT gate
//! and the local APIC; checked with an IPI event channel the guest sends to itself, twice.
//!
//! The handler is what the FreeBSD glue's upcall does: `EventChannels::poll` for vCPU 0 into
//! a small buffer, then dispatch by token. Switching the domain to FIFO is for good, so this
//! runs last in the basic run (the xenstore and console waits poll 2-level pending bits).

use core::sync::atomic::{AtomicU32, Ordering};

use alloc::format;
use alloc::string::String;
use xen_evtchn::{BindOptions, Config, Event, EventChannels, PageSource};
use xen_kmod::arch::cpuid::XenCpuid;
use xen_kmod::arch::XenPlatform;
use xen_kmod::hvm;
use xen_shmem::SharedMem;

use crate::arch::{self, IrqCell};
use crate::events::Events;
use crate::pages::PagePool;
use crate::time::{self, Deadline};

/// Pages for the FIFO control block and event arrays.
#[derive(Debug)]
pub struct PoolPages(&'static PagePool);

impl PageSource<'static> for PoolPages {
    fn alloc_page(&mut self) -> Result<(SharedMem<'static>, u64), xen_evtchn::Error> {
        let run = self.0.alloc(1).ok_or(xen_evtchn::Error::NoMemory)?;
        Ok((run.mem, run.gfn))
    }
}

type Channels = EventChannels<'static, &'static XenPlatform, PoolPages>;

static CHANNELS: IrqCell<Option<Channels>> = IrqCell::new(None);

/// The token of the test IPI.
const IPI_TOKEN: u64 = 0x1b1;

/// Upcalls taken.
static UPCALLS: AtomicU32 = AtomicU32::new(0);
/// IPI events dispatched.
static EVENTS: AtomicU32 = AtomicU32::new(0);
/// Events with a token we did not bind.
static STRAY: AtomicU32 = AtomicU32::new(0);

fn handler() {
    UPCALLS.fetch_add(1, Ordering::SeqCst);
    let now = time::now_ns(&crate::shared_info()).unwrap_or(0);
    let mut buf = [Event::default(); 16];
    // Bounded: at most a few rounds of 16 events per upcall; the rest waits for the next one.
    for _ in 0..4 {
        let out = CHANNELS.with(|c| c.as_mut().map(|ec| ec.poll(0, now, &mut buf)));
        let Some(Some(Ok(outcome))) = out else {
            return;
        };
        for e in &buf[..outcome.delivered.min(buf.len())] {
            if e.token == IPI_TOKEN {
                EVENTS.fetch_add(1, Ordering::SeqCst);
            } else {
                STRAY.fetch_add(1, Ordering::SeqCst);
            }
        }
        if !outcome.more {
            return;
        }
    }
}

/// Sends to `port` with interrupts enabled and waits (at most `ms`) for the handler to
/// dispatch one more event; returns the latency in ns.
fn send_and_wait(ev: &Events, port: u32, ms: u64) -> Result<u64, String> {
    let before = EVENTS.load(Ordering::SeqCst);
    let start = time::now_ns(&ev.si).unwrap_or(0);
    let deadline = Deadline::after_ms(&ev.si, ms);
    arch::interrupts_enable();
    let sent = ev.notify(port);
    while sent.is_ok() && EVENTS.load(Ordering::SeqCst) == before && !deadline.passed(&ev.si) {
        core::hint::spin_loop();
    }
    arch::interrupts_disable();
    sent.map_err(|e| format!("EVTCHNOP_send: {e}"))?;
    if EVENTS.load(Ordering::SeqCst) == before {
        return Err(format!(
            "no event within {ms} ms ({} upcalls, {} stray)",
            UPCALLS.load(Ordering::SeqCst),
            STRAY.load(Ordering::SeqCst)
        ));
    }
    Ok(time::now_ns(&ev.si).unwrap_or(start).saturating_sub(start))
}

/// The scenario: returns the detail of the result line.
pub fn run(ev: &Events, xen: &XenCpuid) -> Result<String, String> {
    if !xen.has_upcall_vector() {
        return Err(format!(
            "XEN_HVM_CPUID_UPCALL_VECTOR not offered (leaf 4 eax {:#x})",
            xen.hvm_features
        ));
    }
    let apic = arch::lapic_enable().map_err(|e| format!("local APIC: {e:?}"))?;
    let vcpu0 = ev.si.legacy_vcpu_info(0).ok_or("no vcpu_info for vCPU 0")?;
    let pool: &'static PagePool = alloc::boxed::Box::leak(alloc::boxed::Box::new(PagePool::new()));
    let ec = EventChannels::new(ev.hv, PoolPages(pool), ev.si, vcpu0, Config::default())
        .map_err(|e| format!("EventChannels::new: {e}"))?;
    let abi = ec.abi();
    let refused = ec.fifo_refused();
    // Interrupts are off here (they are only ever enabled inside `send_and_wait`).
    CHANNELS.with(|c| *c = Some(ec));
    let port = CHANNELS
        .with(|c| {
            c.as_mut()
                .map(|ec| ec.bind_ipi(0, BindOptions::new(IPI_TOKEN)))
        })
        .flatten()
        .ok_or("event channels unavailable")?
        .map_err(|e| format!("bind_ipi: {e}"))?;
    arch::set_upcall_handler(handler);
    hvm::set_upcall_vector(ev.hv, 0, arch::UPCALL_VECTOR)
        .map_err(|e| format!("HVMOP_set_evtchn_upcall_vector: {e}"))?;
    let first = send_and_wait(ev, port, 2000)?;
    // A second event proves the EOI and the ABI's re-arming let the next one through.
    let second = send_and_wait(ev, port, 2000)?;
    let _ = CHANNELS.with(|c| c.as_mut().map(|ec| ec.close(port)));
    Ok(format!(
        "xen-evtchn {abi:?}{} vector {:#x} apic {apic:#x} ipi port {port}: 2 events in {} upcalls, {} us / {} us",
        refused.map_or(String::new(), |e| format!(" (FIFO refused: {e})")),
        arch::UPCALL_VECTOR,
        UPCALLS.load(Ordering::SeqCst),
        first / 1000,
        second / 1000
    ))
}
