//! Event channels by polling: pending bits in `shared_info`, `EVTCHNOP_send`, `SCHEDOP_poll`.
//!
//! The xenstore and console ports are masked and waited on with `SCHEDOP_poll` (Xen wakes a
//! poller whatever the mask), so they never raise upcalls; the upcall scenario uses its own
//! port.

use xen_kmod::arch::XenPlatform;
use xen_kmod::shared::SharedInfo;
use xen_kmod::{HypervisorExt, XenError};

use crate::time::Deadline;

/// The hypervisor and `shared_info`: what every event-channel operation needs.
#[derive(Clone, Copy, Debug)]
pub struct Events {
    /// The hypercall interface.
    pub hv: &'static XenPlatform,
    /// Our `shared_info` page.
    pub si: SharedInfo<'static>,
}

impl Events {
    /// Notifies the other end of `port`.
    ///
    /// # Errors
    /// Xen's error.
    pub fn notify(&self, port: u32) -> Result<(), XenError> {
        self.hv.evtchn_send(port)
    }

    /// Masks `port` (no upcalls for it; pending bits still get set and wake pollers).
    pub fn mask(&self, port: u32) {
        let _ = self.si.evtchn_mask().test_and_set(port);
    }

    /// Takes the pending bit of `port`: whether it was set.
    pub fn take_pending(&self, port: u32) -> bool {
        self.si.evtchn_pending().test_and_clear(port) == Some(true)
    }

    /// Waits until `port` is pending or `ms` milliseconds pass; takes the pending bit and
    /// returns whether it was set.
    ///
    /// # Errors
    /// Xen's error from `SCHEDOP_poll`.
    pub fn wait(&self, port: u32, ms: u64) -> Result<bool, XenError> {
        if self.take_pending(port) {
            return Ok(true);
        }
        let deadline = Deadline::after_ms(&self.si, ms);
        self.hv.sched_poll(&[port], deadline.at())?;
        Ok(self.take_pending(port))
    }
}
