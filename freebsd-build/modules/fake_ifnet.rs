// Fakes of the shim functions xn.ko and xnb.ko share (`XENRS_IFNET_GLUE` in
// `include/xenrs_ifnet.h`, `XENRS_SYSCTL_DEV` in `include/xenrs_glue.h`), for their host tests:
// `include!`d into each test crate's `shim` module, then `fake_ifnet!(xn, <ifnet record>)`
// defines the state they record (plus the crate's own fields), `with`/`reset`/`mbuf`, and the
// `#[no_mangle]` fakes under the module's prefix. Also what both crates' tests of the device
// glue share: the xenstore set-up of a second interface (`toolstack_vif`), the module's load
// through the simulated xenrs API (`load_through_the_api`), the reads of `dev.<m>.<unit>`
// leaves (`dev_stat`), the check that an unload left nothing (`assert_unloaded`) and the count
// of a line in the console (`console_count`).

/// `fake_ifnet!(prefix, IfnetRecord, { extra_field: Type, ... })`.
macro_rules! fake_ifnet {
    ($m:ident, $ifnet:ty, { $($(#[$doc:meta])* $field:ident : $fty:ty),* $(,)? }) => {
        #[derive(Debug, Default)]
        pub struct State {
            /// Live ifnets: handle -> the crate's record.
            pub ifnets: std::collections::BTreeMap<usize, $ifnet>,
            pub destroyed: usize,
            /// Link changes in order.
            pub links: Vec<bool>,
            /// Packets to transmit: handle -> bytes.
            pub tx: std::collections::BTreeMap<usize, Vec<u8>>,
            /// Received mbufs: handle -> (bytes, csum_valid).
            pub rx: std::collections::BTreeMap<usize, (Vec<u8>, bool)>,
            /// Mbufs passed to if_input, in order.
            pub input: Vec<usize>,
            /// Transmitted mbufs freed by the glue.
            pub freed: usize,
            /// The softc each ifnet was created with.
            pub softcs: std::collections::BTreeMap<usize, usize>,
            pub sysctl_live: usize,
            pub next: usize,
            $($(#[$doc])* pub $field: $fty,)*
        }

        static STATE: std::sync::Mutex<Option<State>> = std::sync::Mutex::new(None);

        pub fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
            let mut g = STATE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(g.get_or_insert_with(State::default))
        }

        pub fn reset() {
            with(|s| *s = State::default());
        }

        fn next(s: &mut State) -> usize {
            s.next += 1;
            0x10_0000 + s.next * 16
        }

        /// A packet for the glue's transmit path.
        pub fn mbuf(bytes: &[u8]) -> usize {
            with(|s| {
                let h = next(s);
                s.tx.insert(h, bytes.to_vec());
                h
            })
        }

        #[export_name = concat!("xenrs_", stringify!($m), "_ifnet_destroy")]
        pub extern "C" fn ifnet_destroy(ifp: *mut std::ffi::c_void) {
            with(|s| {
                s.ifnets.remove(&(ifp as usize)).expect("live ifnet");
                s.destroyed += 1;
            });
        }

        #[export_name = concat!("xenrs_", stringify!($m), "_link")]
        pub extern "C" fn link(ifp: *mut std::ffi::c_void, up: std::ffi::c_int) {
            with(|s| {
                assert!(
                    s.ifnets.contains_key(&(ifp as usize)),
                    "link of a dead ifnet"
                );
                s.links.push(up != 0);
            });
        }

        /// # Safety
        /// `buf` is valid for `len` bytes.
        #[export_name = concat!("xenrs_", stringify!($m), "_m_copydata")]
        pub unsafe extern "C" fn m_copydata(
            m: *mut std::ffi::c_void,
            off: u32,
            len: u32,
            buf: *mut u8,
        ) {
            let src = with(|s| s.tx.get(&(m as usize)).cloned()).expect("live mbuf");
            let (off, len) = (off as usize, len as usize);
            // SAFETY: by contract.
            unsafe { std::ptr::copy_nonoverlapping(src[off..off + len].as_ptr(), buf, len) };
        }

        /// # Safety
        /// `data` is valid for `len` bytes.
        #[export_name = concat!("xenrs_", stringify!($m), "_mbuf")]
        pub unsafe extern "C" fn mbuf_rx(
            _ifp: *mut std::ffi::c_void,
            data: *const u8,
            len: u32,
            csum_valid: std::ffi::c_int,
        ) -> *mut std::ffi::c_void {
            // SAFETY: by contract.
            let bytes = unsafe { std::slice::from_raw_parts(data, len as usize) }.to_vec();
            with(|s| {
                let h = next(s);
                s.rx.insert(h, (bytes, csum_valid != 0));
                h as *mut std::ffi::c_void
            })
        }

        #[export_name = concat!("xenrs_", stringify!($m), "_input")]
        pub extern "C" fn input(ifp: *mut std::ffi::c_void, m: *mut std::ffi::c_void) {
            with(|s| {
                assert_eq!(
                    freebsd_kpi::fake::locks_held(),
                    0,
                    "if_input with a lock of the interface held"
                );
                assert!(
                    s.ifnets.contains_key(&(ifp as usize)),
                    "input on a dead ifnet"
                );
                s.input.push(m as usize);
            });
        }

        #[export_name = concat!("xenrs_", stringify!($m), "_m_freem")]
        pub extern "C" fn m_freem(m: *mut std::ffi::c_void) {
            with(|s| {
                assert!(
                    s.tx.remove(&(m as usize)).is_some(),
                    "m_freem of an unknown mbuf"
                );
                s.freed += 1;
            });
        }

        #[export_name = concat!("xenrs_", stringify!($m), "_sysctl_attach")]
        pub extern "C" fn sysctl_attach(
            _softc: *mut std::ffi::c_void,
            _unit: u32,
        ) -> *mut std::ffi::c_void {
            with(|s| {
                s.sysctl_live += 1;
                next(s) as *mut std::ffi::c_void
            })
        }

        #[export_name = concat!("xenrs_", stringify!($m), "_sysctl_detach")]
        pub extern "C" fn sysctl_detach(_ctx: *mut std::ffi::c_void) {
            with(|s| s.sysctl_live -= 1);
        }
    };
}

/// The toolstack's nodes of vif `handle` of the guest (`World::toolstack` makes vif 0), so a
/// test can attach a second interface beside it.
pub fn toolstack_vif(
    world: &xen_tests::net::pair::World,
    xs: &xen_tests::xensim::xenstored::XenstoreSim,
    handle: u32,
    mac: &str,
) {
    use xen_xenbus::{Access, Perm};
    let fe = world.guest.domid();
    let fd = format!("/local/domain/{fe}/device/vif/{handle}");
    let bd = format!("/local/domain/0/backend/vif/{fe}/{handle}");
    let fperm = [Perm::new(Access::None, fe), Perm::new(Access::Read, 0)];
    let bperm = [Perm::new(Access::None, 0), Perm::new(Access::Read, fe)];
    let mut d = xs.daemon();
    for (k, v) in [
        ("backend", bd.as_str()),
        ("backend-id", "0"),
        ("mac", mac),
        ("handle", &handle.to_string()),
        ("trusted", "1"),
        ("state", "1"),
    ] {
        d.put(&format!("{fd}/{k}"), v.as_bytes(), &fperm);
    }
    for (k, v) in [
        ("frontend", fd.as_str()),
        ("frontend-id", &fe.to_string()),
        ("mac", mac),
        ("state", "1"),
    ] {
        d.put(&format!("{bd}/{k}"), v.as_bytes(), &bperm);
    }
}

/// Leaf `which` (the module's `DevStat` number) of `dev.<m>.<unit>` of a live softc, read
/// through the entry point its sysctl handler calls.
pub fn dev_stat(softc: usize, which: i32) -> u64 {
    let mut v = 0;
    // SAFETY: a softc the fake ifnet_create recorded, live until detach (the caller's test
    // holds it so); `v` is a u64.
    let rc = unsafe { crate::sys::dev_stat(softc as *mut _, which, &mut v) };
    assert_eq!(rc, 0, "leaf {which}");
    v
}

/// What a module's unload leaves: no lock held, no sysctl context, no taskqueue.
pub fn assert_unloaded() {
    assert_eq!(
        (
            freebsd_kpi::fake::locks_out(),
            with(|s| s.sysctl_live),
            freebsd_kpi::fake::taskqueues().len()
        ),
        (0, 0, 0)
    );
}

/// A network module loaded through the simulated xenrs API ([`load_through_the_api`]): dom0
/// and the guest (kept for the rest of the test process), the store, the services, the
/// driver's count of live devices, its kick slot and its registration.
pub type Loaded = (
    &'static xen_tests::net::pair::World,
    &'static xen_tests::xensim::xenstored::XenstoreSim,
    std::sync::Arc<xenrs_api::sim::SimXen>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    std::sync::Arc<crate::xen::KickSlot>,
    xenrs_api::host::HostReg<xenrs_api::sim::SimXs>,
);

/// The toolstack's vifs of a fresh guest, one a MAC of `macs` (handles 0, 1, ...), and the
/// module loaded through the simulated xenrs API of the domain `side` picks (with
/// `grant_frames` grant frames) in `role`: `driver` makes the driver from the services, the
/// count of live devices and the kick slot; the kick runs `xen::on_kick`. The bus settled.
pub fn load_through_the_api(
    macs: &[&str],
    side: fn(&'static xen_tests::net::pair::World) -> &'static xen_tests::xensim::DomainHandle,
    grant_frames: u32,
    role: xen_xenbus::Role,
    driver: impl FnOnce(
        std::sync::Arc<xenrs_api::sim::SimXen>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
        std::sync::Arc<crate::xen::KickSlot>,
    ) -> Box<
        dyn xen_xenbus::Driver<xenrs_api::host::HostStore<xenrs_api::sim::SimXs>> + Send,
    >,
) -> Loaded {
    use std::sync::Arc;
    let vifs = u32::try_from(macs.len()).expect("a few vifs");
    let world = xen_tests::net::bus::leak(xen_tests::net::pair::World::new(vifs));
    let xs = xen_tests::net::bus::leak(xen_tests::xensim::xenstored::XenstoreSim::new());
    world.toolstack(xs, macs[0], true);
    for (handle, mac) in (1..).zip(&macs[1..]) {
        toolstack_vif(world, xs, handle, mac);
    }
    let xen = Arc::new(xenrs_api::sim::xen(side(world), xs, grant_frames));
    let live = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let kick = Arc::new(crate::xen::KickSlot::new().expect("kick slot"));
    let reg = xenrs_api::sim::load_with_kick(
        &xen,
        xs,
        role,
        driver(xen.clone(), live.clone(), kick.clone()),
        Box::new(crate::xen::on_kick),
        |k| kick.set(k),
    );
    (world, xs, xen, live, kick, reg)
}

/// How often `needle` stands in the fake kernel's console: a device logs its failure once.
pub fn console_count(needle: &str) -> usize {
    freebsd_kpi::fake::console().matches(needle).count()
}
