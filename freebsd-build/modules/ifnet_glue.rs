// The Rust side of what the network modules (xn.ko, xnb.ko) share: the shim functions that
// `XENRS_IFNET_GLUE(m)` (`include/xenrs_ifnet.h`) and `XENRS_SYSCTL_DEV(m, ...)`
// (`include/xenrs_glue.h`) define under the module's prefix, and the module's side of the
// per-device softc over them (`freebsd_kpi::device`). `include!`d into each crate's `sys`
// module, then `ifnet_glue!` defines them there; `fake_ifnet.rs` fakes the same functions for
// the host tests.
//
// A macro and not a shared crate, because the C names carry the module's prefix (distinct
// names let both modules link into one custom kernel) and each module's device trait and
// queued packet are its own: xn's packet carries the TSO segment size, xnb's does not.
//
// Last, the two steps of failing a device at a peer's protocol violation that both modules take
// alike (`latch_failure`, `report_failure`): plain generic functions, in each `sys` module.

/// Defines, in the including `sys` module:
///
/// - `shim`: the shared shim functions under the module's prefix (`shim::input` is
///   `xenrs_<m>_input`, ...), for the module's `IfKpi` implementation and the glue below;
/// - `Kernel` (the kernel's network stack for one softc), `kernel`, `kernel_for_tests`;
/// - `KickSlot` and `on_kick`: how a device that found a protocol violation gets a run on
///   xen.ko's xenbus thread to report it;
/// - `Inputs`, `Glue` (the [`DeviceGlue`](freebsd_kpi::device::DeviceGlue)) and the `Softc`,
///   `SoftcBox` and `EventSink` types over it;
/// - the entry points the shim calls with a softc: `SIOCSIFMTU` (`xenrs_<m>_ioctl_mtu`) and
///   the `dev.<m>.<unit>` leaves (`xenrs_<m>_dev_stat`).
///
/// It expects in scope: `IfDevice` (the device trait: `set_mtu`, `stat`, `event`),
/// `Deferred` (a packet from `if_transmit`, with its mbuf in field `m`), `TXQ_MAX`,
/// `IfHandle` and `MbufHandle`. `transmit: |dev, p| ...` hands a queued packet to the device
/// (its result is ignored: the mbuf is freed either way); `enetdown` is what `SIOCSIFMTU`
/// answers when the device is gone.
macro_rules! ifnet_glue {
    (
        prefix: $m:ident,
        name: $name:expr,
        queue_name: $queue_name:expr,
        enetdown: $enetdown:expr,
        transmit: |$dev:ident, $p:ident| $transmit:expr $(,)?
    ) => {
        /// The shim functions xn.ko and xnb.ko share (`XENRS_IFNET_GLUE` and
        /// `XENRS_SYSCTL_DEV`), under this module's prefix.
        pub(crate) mod shim {
            use core::ffi::{c_int, c_void};

            extern "C" {
                #[link_name = concat!("xenrs_", stringify!($m), "_ifnet_destroy")]
                pub fn ifnet_destroy(ifp: *mut c_void);
                #[link_name = concat!("xenrs_", stringify!($m), "_link")]
                pub fn link(ifp: *mut c_void, up: c_int);
                #[link_name = concat!("xenrs_", stringify!($m), "_m_copydata")]
                pub fn m_copydata(m: *mut c_void, off: u32, len: u32, buf: *mut u8);
                #[link_name = concat!("xenrs_", stringify!($m), "_mbuf")]
                pub fn mbuf(ifp: *mut c_void, data: *const u8, len: u32, csum_valid: c_int)
                    -> *mut c_void;
                #[link_name = concat!("xenrs_", stringify!($m), "_input")]
                pub fn input(ifp: *mut c_void, m: *mut c_void);
                #[link_name = concat!("xenrs_", stringify!($m), "_m_freem")]
                pub fn m_freem(m: *mut c_void);
                #[link_name = concat!("xenrs_", stringify!($m), "_sysctl_attach")]
                pub fn sysctl_attach(softc: *mut c_void, unit: u32) -> *mut c_void;
                #[link_name = concat!("xenrs_", stringify!($m), "_sysctl_detach")]
                pub fn sysctl_detach(ctx: *mut c_void);
            }
        }

        /// The kernel's network stack, for the interface whose softc is `softc`.
        #[derive(Debug)]
        pub struct Kernel {
            softc: *mut core::ffi::c_void,
        }

        // SAFETY: `softc` is an address handed to the shim only; the kernel functions may be
        // called from any thread.
        unsafe impl Send for Kernel {}

        /// The kernel stack with no softc, for host tests (the fakes ignore it).
        #[cfg(test)]
        pub(crate) fn kernel_for_tests() -> Kernel {
            Kernel {
                softc: core::ptr::null_mut(),
            }
        }

        /// The kernel stack for `softc`'s interface.
        pub fn kernel(softc: &SoftcBox) -> Kernel {
            Kernel {
                softc: softc.as_raw(),
            }
        }

        /// Received mbufs waiting for `if_input` (called once the mutex is released).
        pub type Inputs = alloc::vec::Vec<(IfHandle, MbufHandle)>;

        #[doc = concat!(
            stringify!($m),
            "'s side of the shared per-device softc ([`freebsd_kpi::device`]): the device is \
             an [`IfDevice`], the work waiting for its lock packets from `if_transmit`, and \
             what an event hands out received frames, passed up once the lock is released."
        )]
        #[derive(Debug)]
        pub enum Glue {}

        impl freebsd_kpi::device::DeviceGlue for Glue {
            type Dev = dyn IfDevice;
            type Work = Deferred;
            type Out = Inputs;
            const NAME: &'static core::ffi::CStr = $name;
            const QUEUE_NAME: &'static core::ffi::CStr = $queue_name;
            const PRIORITY: freebsd_kpi::taskqueue::Priority =
                freebsd_kpi::taskqueue::Priority::Wait;
            const QUEUE_MAX: usize = TXQ_MAX;

            fn run(dev: Option<&mut (dyn IfDevice + 'static)>, packet: Deferred) {
                if let Some($dev) = dev {
                    let $p = &packet;
                    let _ = $transmit;
                }
                // SAFETY: the mbuf if_transmit handed over and we kept; copied to the ring (or
                // dropped) above, freed once.
                unsafe { shim::m_freem(packet.m.0 as *mut core::ffi::c_void) };
            }

            fn event(
                dev: &mut (dyn IfDevice + 'static),
                out: &mut Inputs,
            ) -> freebsd_kpi::device::Again {
                // Work left at a budget: run again, from the taskqueue when there is one.
                if dev.event(out) {
                    freebsd_kpi::device::Again::Soon
                } else {
                    freebsd_kpi::device::Again::No
                }
            }

            fn finish(inputs: Inputs) {
                pass_up(inputs);
            }

            const SYSCTL_ATTACH: unsafe extern "C" fn(
                *mut core::ffi::c_void,
                u32,
            ) -> *mut core::ffi::c_void = shim::sysctl_attach;
            const SYSCTL_DETACH: unsafe extern "C" fn(*mut core::ffi::c_void) =
                shim::sysctl_detach;
        }

        /// Where the devices find the registration's [`xenrs_api::Kicker`] (set once the
        /// driver is registered): a request for a run on xen.ko's xenbus thread, where a
        /// device that found a protocol violation in its event or transmit path reports it
        /// (its xenstore `error` node, `Closing`), which needs the store.
        #[derive(Debug)]
        pub struct KickSlot(freebsd_kpi::sync::Mutex<Option<xenrs_api::Kicker>>);

        impl KickSlot {
            /// An empty slot; `None` when the kernel has no memory for its mutex.
            pub fn new() -> Option<KickSlot> {
                freebsd_kpi::sync::Mutex::new($name, None).ok().map(KickSlot)
            }

            /// Records the kicker (the registration's, once it exists).
            pub fn set(&self, k: xenrs_api::Kicker) {
                self.0.with(|slot| *slot = Some(k));
            }

            /// Asks for a xenbus-thread run, if registered (the mutex is not held while
            /// asking).
            pub fn kick(&self) {
                if let Some(k) = self.0.with(|slot| slot.clone()) {
                    k.kick();
                }
            }
        }

        /// The registration's kick function: every connected device looks at its other end
        /// again, which makes one that failed report it; for a healthy device it changes
        /// nothing (connected to a connected peer).
        pub fn on_kick<S: xen_xenbus::bus::XenStore + ?Sized>(
            bus: &mut xen_xenbus::Bus<S>,
            xs: &mut S,
        ) {
            let names: alloc::vec::Vec<alloc::string::String> = bus
                .devices()
                .filter(|d| d.state() == xen_xenbus::XenbusState::Connected)
                .map(|d| alloc::string::String::from(d.nodename()))
                .collect();
            for name in names {
                let _ = bus.with_device(xs, &name, |driver, xs, dev| {
                    let state = dev.otherend_state();
                    driver.otherend_changed(xs, dev, state)
                });
            }
        }

        /// The per-interface object: `if_getsoftc()` and the softc of its sysctl leaves.
        pub type Softc = freebsd_kpi::device::Softc<Glue>;
        /// An attached interface's softc, owned by the driver until [`SoftcBox::free`].
        pub type SoftcBox = freebsd_kpi::device::SoftcBox<Glue>;
        /// The event handlers' way to the softc.
        pub type EventSink = freebsd_kpi::device::EventSink<Glue>;

        /// `if_input` for each received frame, with no lock of ours held.
        fn pass_up(inputs: Inputs) {
            for (ifp, m) in inputs {
                // SAFETY: a live ifnet (it is destroyed only after every port is unbound, so
                // no event is being handled) and an mbuf handed to the stack once.
                unsafe {
                    shim::input(ifp.0 as *mut core::ffi::c_void, m.0 as *mut core::ffi::c_void);
                }
            }
        }

        fn softc_ref<'s>(softc: *mut core::ffi::c_void) -> &'s Softc {
            // SAFETY: every caller is an entry point whose contract is a live softc (the
            // ifnet's, which is destroyed before the softc is freed).
            unsafe { Softc::from_raw(softc) }
        }

        /// `SIOCSIFMTU`.
        ///
        /// # Safety
        /// `softc` is a live softc.
        #[export_name = concat!("xenrs_", stringify!($m), "_ioctl_mtu")]
        pub unsafe extern "C" fn ioctl_mtu(
            softc: *mut core::ffi::c_void,
            mtu: core::ffi::c_int,
        ) -> core::ffi::c_int {
            softc_ref(softc).with(|dev| dev.as_mut().map_or($enetdown, |d| d.set_mtu(mtu)))
        }

        #[doc = concat!("A `dev.", stringify!($m), ".<unit>` leaf.")]
        ///
        /// # Safety
        /// `softc` is a live softc; `out` is valid for a `u64` write.
        #[export_name = concat!("xenrs_", stringify!($m), "_dev_stat")]
        pub unsafe extern "C" fn dev_stat(
            softc: *mut core::ffi::c_void,
            which: core::ffi::c_int,
            out: *mut u64,
        ) -> core::ffi::c_int {
            /// `ENOENT`: no such leaf (or no device).
            const ENOENT: core::ffi::c_int = 2;
            let Ok(which) = u32::try_from(which) else {
                return ENOENT;
            };
            match softc_ref(softc).with(|dev| dev.as_ref().and_then(|d| d.stat(which))) {
                Some(v) => {
                    // SAFETY: valid for a u64 write by the caller's contract.
                    unsafe { out.write(v) };
                    0
                }
                None => ENOENT,
            }
        }
    };
}

/// The methods of the module's `IfKpi` that are one call of a shared shim function each
/// (`ifnet_destroy`, `link`, `copydata`, `mbuf`, `input`): invoked inside
/// `impl IfKpi for Kernel`, after `ifnet_glue!` (which declares `shim`).
macro_rules! ifnet_kpi_shared {
    () => {
        fn ifnet_destroy(&self, ifp: IfHandle) {
            // SAFETY: from ifnet_create, destroyed once (the glue forgets the handle).
            unsafe { shim::ifnet_destroy(ifp.0 as *mut core::ffi::c_void) }
        }

        fn link(&self, ifp: IfHandle, up: bool) {
            // SAFETY: a live ifnet.
            unsafe { shim::link(ifp.0 as *mut core::ffi::c_void, core::ffi::c_int::from(up)) }
        }

        fn copydata(&self, m: MbufHandle, buf: &mut [u8]) {
            let Ok(len) = u32::try_from(buf.len()) else {
                return;
            };
            // SAFETY: `m` is a packet if_transmit handed over, not freed before the transmit
            // that copies it returns, at least `buf.len()` bytes long (the caller checked it
            // against m_pkthdr.len); `buf` is valid for that many bytes.
            unsafe { shim::m_copydata(m.0 as *mut core::ffi::c_void, 0, len, buf.as_mut_ptr()) }
        }

        fn mbuf(&self, ifp: IfHandle, data: &[u8], csum_valid: bool) -> Option<MbufHandle> {
            let len = u32::try_from(data.len()).ok()?;
            // SAFETY: a live ifnet; `data` is valid for `len` bytes during the call (copied).
            let m = unsafe {
                shim::mbuf(
                    ifp.0 as *mut core::ffi::c_void,
                    data.as_ptr(),
                    len,
                    core::ffi::c_int::from(csum_valid),
                )
            };
            (!m.is_null()).then_some(MbufHandle(m as usize))
        }

        fn input(&self, ifp: IfHandle, m: MbufHandle) {
            // SAFETY: a live ifnet and an mbuf from `mbuf`, handed to the stack once.
            unsafe {
                shim::input(
                    ifp.0 as *mut core::ffi::c_void,
                    m.0 as *mut core::ffi::c_void,
                );
            }
        }
    };
}

/// The first failure `failed` finds among `queues`, unless `slot` holds one already (a device
/// keeps the reason it failed for first): stored in `slot`, and returned, only when new. The
/// queues are not looked at once a failure is held.
pub(crate) fn latch_failure<Q, F: Copy>(
    slot: &mut Option<F>,
    queues: &[Q],
    failed: impl FnMut(&Q) -> Option<F>,
) -> Option<F> {
    if slot.is_some() {
        return None;
    }
    let f = queues.iter().find_map(failed)?;
    *slot = Some(f);
    Some(f)
}

/// Tells the store that the device failed, after the caller released what the peer shared:
/// `reason` in the device's `error` node, then `Closing` where its state allows that.
///
/// # Errors
/// The store's.
pub(crate) fn report_failure<S: xen_xenbus::bus::XenStore + ?Sized>(
    xs: &mut S,
    dev: &mut xen_xenbus::Device,
    reason: &dyn core::fmt::Display,
) -> Result<(), xen_xenbus::Error> {
    dev.write_node(xs, "error", &alloc::format!("{reason}"))?;
    if dev.state().can_switch_to(xen_xenbus::XenbusState::Closing) {
        dev.switch_state(xs, xen_xenbus::XenbusState::Closing)?;
    }
    Ok(())
}
