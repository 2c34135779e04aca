//! Event delivery by interrupt: `HVMOP_set_evtchn_upcall_vector` with an IDT entry and the
//! local APIC, checked with an IPI event channel the guest sends to itself.
//!
//! The handler is the 2-level upcall scan (clear `evtchn_upcall_pending`, take the selector,
//! walk pending & ~mask words, take each pending bit) written over `xen_kmod::shared`; the
//! xenstore and console ports are masked, so only ports the guest unmasked are taken.

use core::sync::atomic::{AtomicU32, Ordering};

use alloc::format;
use alloc::string::String;
use xen_kmod::arch::cpuid::XenCpuid;
use xen_kmod::hvm;
use xen_kmod::shared::BITS_PER_XEN_ULONG;
use xen_kmod::HypervisorExt;

use crate::arch;
use crate::events::Events;
use crate::time::{self, Deadline};

/// Upcalls taken.
static UPCALLS: AtomicU32 = AtomicU32::new(0);
/// Events (ports) taken by the handler.
static EVENTS: AtomicU32 = AtomicU32::new(0);
/// The last port the handler took.
static LAST_PORT: AtomicU32 = AtomicU32::new(u32::MAX);

fn handler() {
    UPCALLS.fetch_add(1, Ordering::SeqCst);
    let si = crate::shared_info();
    let Some(vi) = si.legacy_vcpu_info(0) else {
        return;
    };
    vi.clear_upcall_pending();
    let sel = vi.take_pending_sel();
    let pending = si.evtchn_pending();
    let mask = si.evtchn_mask();
    let words_per_sel = BITS_PER_XEN_ULONG / 32;
    for s in 0..BITS_PER_XEN_ULONG {
        if sel & (1u64 << s) == 0 {
            continue;
        }
        for w in s * words_per_sel..(s + 1) * words_per_sel {
            let mut ready = pending.load_word32(w) & !mask.load_word32(w);
            while ready != 0 {
                let bit = ready.trailing_zeros();
                ready &= ready - 1;
                let port = w * 32 + bit;
                if pending.test_and_clear(port) == Some(true) {
                    EVENTS.fetch_add(1, Ordering::SeqCst);
                    LAST_PORT.store(port, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Sends to `port` with interrupts enabled and waits (at most `ms`) for the handler to take
/// one more event; returns the latency in ns.
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
            "no upcall within {ms} ms (upcalls {}, pending {:?})",
            UPCALLS.load(Ordering::SeqCst),
            ev.si.evtchn_pending().test(port)
        ));
    }
    if LAST_PORT.load(Ordering::SeqCst) != port {
        return Err(format!(
            "upcall took port {}, not {port}",
            LAST_PORT.load(Ordering::SeqCst)
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
    arch::set_upcall_handler(handler);
    let port = ev
        .hv
        .evtchn_bind_ipi(0)
        .map_err(|e| format!("EVTCHNOP_bind_ipi: {e}"))?;
    ev.unmask(port);
    // Events raised before the vector existed left the upcall flag and selector set; Xen only
    // raises the vector on a 0 -> 1 flag transition, so start from a clean state.
    if let Some(vi) = ev.si.legacy_vcpu_info(0) {
        vi.clear_upcall_pending();
        let _ = vi.take_pending_sel();
    }
    hvm::set_upcall_vector(ev.hv, 0, arch::UPCALL_VECTOR)
        .map_err(|e| format!("HVMOP_set_evtchn_upcall_vector: {e}"))?;
    let first = send_and_wait(ev, port, 2000)?;
    // A second event proves the EOI and the flag/selector reset let the next one through.
    let second = send_and_wait(ev, port, 2000)?;
    let _ = ev.hv.evtchn_close(port);
    Ok(format!(
        "vector {:#x} apic {apic:#x} ipi port {port}: 2 events, {} upcalls, {} us / {} us",
        arch::UPCALL_VECTOR,
        UPCALLS.load(Ordering::SeqCst),
        first / 1000,
        second / 1000
    ))
}
