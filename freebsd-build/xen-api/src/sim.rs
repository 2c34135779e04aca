//! Test support (feature `host`): [`HostXen`] over one xensim domain, as the driver modules'
//! host tests set it up — the domain's xenstore connection, its grant table, its pages and
//! free guest-physical slots for foreign maps — so each test writes only what is particular
//! to its driver.
//!
//! ```ignore
//! let xen = Arc::new(xenrs_api::sim::xen(guest, xs, 8));
//! let reg = xen.register_driver(Role::Frontend, Box::new(driver))?;
//! xenrs_api::sim::pump(&xen, xs, 16); // xenstore and xen.ko's xenbus thread until quiet
//! ```

extern crate std;

use alloc::boxed::Box;
use alloc::vec::Vec;

use xen_shmem::SharedMem;
use xen_tests::xensim::xenstored::{SimTransport, XenstoreSim};
use xen_tests::xensim::{DomainConfig, DomainHandle, SimHypervisor};
use xen_xenbus::{Transport, TransportError};

use crate::host::{HostMemory, HostXen};

/// A domain's xenstore connection for [`HostXen`], which wants `Send`.
#[derive(Debug)]
pub struct SimXs(pub SimTransport);

// SAFETY: the simulated machine (daemon, domains, connections) lives on the test's thread
// only; HostXen's mutexes never hand the transport to another thread.
unsafe impl Send for SimXs {}

impl Transport for SimXs {
    fn send(&mut self, bytes: &[u8]) -> Result<usize, TransportError> {
        self.0.send(bytes)
    }
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize, TransportError> {
        self.0.recv(buf)
    }
    fn wait_for_event(&mut self) -> Result<(), TransportError> {
        self.0.wait_for_event()
    }
}

/// A domain's memory for [`HostXen`]: contiguous runs of its pages (zeroed), and free
/// guest-physical slots where foreign grants are mapped.
#[derive(Debug)]
pub struct SimMemory(pub &'static DomainHandle);

/// Pages at most taken from the domain while looking for a contiguous run.
const SEARCH_PAGES: usize = 4096;

impl HostMemory for SimMemory {
    fn alloc(&self, count: u32) -> Option<(SharedMem<'static>, u64)> {
        let run = usize::try_from(count).ok().filter(|&n| n > 0)?;
        // Take pages until `count` of them are adjacent, then give the others back.
        let mut got: Vec<u64> = Vec::new();
        let mut first = None;
        for _ in 0..SEARCH_PAGES {
            let Some(g) = self.0.alloc_page() else {
                break;
            };
            got.push(g);
            got.sort_unstable();
            first = got
                .windows(run)
                .find(|w| w[run - 1] - w[0] == u64::from(count) - 1)
                .map(|w| w[0]);
            if first.is_some() {
                break;
            }
        }
        let view = first.and_then(|f| {
            xen_tests::blk::sim::contiguous_view(self.0, f, count).map(|mem| (mem, f))
        });
        let keep = view.as_ref().map(|(_, f)| *f..*f + u64::from(count));
        for &g in &got {
            if !keep.as_ref().is_some_and(|k| k.contains(&g)) {
                self.0.free_page(g);
            }
        }
        let (mem, first) = view?;
        mem.zero_all();
        Some((mem, first))
    }

    fn free(&self, gfn: u64, count: u32) {
        for i in 0..u64::from(count) {
            self.0.free_page(gfn + i);
        }
    }

    fn reserve_slot(&self) -> Option<u64> {
        self.0.reserve_gfns(1).map(|g| g * 4096)
    }

    fn view_slot(&self, host_addr: u64) -> Option<SharedMem<'static>> {
        self.0.page_any(host_addr / 4096)
    }

    fn release_slot(&self, host_addr: u64) {
        self.0.release_gfns(host_addr / 4096, 1);
    }
}

/// [`HostXen`] over a xensim domain.
pub type SimXen = HostXen<&'static DomainHandle, SimXs>;

/// The services xen.ko would give `dom`: its xenstore connection to `xs`, a grant table of
/// `grant_frames` frames, its memory ([`SimMemory`]).
///
/// # Panics
/// When the grant table cannot be set up (a test set-up error).
pub fn xen(dom: &'static DomainHandle, xs: &XenstoreSim, grant_frames: u32) -> SimXen {
    let table = xen_gnttab::GrantTable::new(
        dom,
        xen_tests::xensim::grants::SimTableFrames::new(dom),
        grant_frames,
    )
    .expect("grant table");
    HostXen::new(
        dom,
        dom.domid(),
        xen_xenbus::Xs::new(
            SimXs(xs.connect(dom.domid())),
            xen_xenbus::Config::default(),
        ),
        Box::new(table),
        Box::new(SimMemory(dom)),
    )
}

/// Dom0 with `dom0_pages` pages of RAM and the guest `guest` with `guest_pages`, as the block
/// modules' tests pair them: kept for the rest of the test process, since the page views the
/// tests hand out must not outlive their domain.
///
/// # Panics
/// When `sim` cannot make them (a test set-up error: too few machine pages, a domid taken).
pub fn dom0_and_guest(
    sim: &SimHypervisor,
    dom0_pages: u32,
    guest: u16,
    guest_pages: u32,
) -> (&'static DomainHandle, &'static DomainHandle) {
    let make = |config, what| -> &'static DomainHandle {
        Box::leak(Box::new(sim.create_domain(config).expect(what)))
    };
    let dom0 = make(
        DomainConfig {
            ram_pages: dom0_pages,
            ..DomainConfig::dom0()
        },
        "dom0",
    );
    let guest = make(
        DomainConfig {
            domid: Some(guest),
            ram_pages: guest_pages,
            ..DomainConfig::guest()
        },
        "guest",
    );
    (dom0, guest)
}

/// Runs xenstore and xen.ko's xenbus thread ([`HostXen::pump`]) until neither has work, at
/// most `rounds` times; whether anything ran.
pub fn pump(xen: &SimXen, xs: &XenstoreSim, rounds: usize) -> bool {
    let mut any = false;
    for _ in 0..rounds {
        let settled = xs.settle();
        let pumped = xen.pump(64).unwrap_or(0);
        any |= settled > 0 || pumped > 0;
        if pumped == 0 {
            break;
        }
    }
    any
}

/// A module's load through the API, as its `MOD_LOAD` does it: registers `driver` in `role`
/// with `on_kick` as the kick function, hands the registration's kicker to `set_kicker` (the
/// module's kick slot, which the driver holds), then [`pump`]s 16 rounds so the bus settles.
/// The network modules' tests of a device failed by a hostile peer all start so.
///
/// # Panics
/// When the registration is refused (a test set-up error).
pub fn load_with_kick(
    xen: &SimXen,
    xs: &XenstoreSim,
    role: xen_xenbus::Role,
    driver: Box<dyn xen_xenbus::Driver<crate::host::HostStore<SimXs>> + Send>,
    on_kick: crate::KickFn<crate::host::HostStore<SimXs>>,
    set_kicker: impl FnOnce(crate::Kicker),
) -> crate::host::HostReg<SimXs> {
    use crate::{Registration as _, XenServices as _};
    let reg = xen
        .register_driver_with_kick(role, driver, on_kick)
        .expect("register");
    set_kicker(reg.kicker());
    pump(xen, xs, 16);
    reg
}

/// Delivers, as xen.ko's upcall would, every event of ports `1..64` that `dom` has pending
/// (each one's pending bit is taken); the ports' handlers run. How many pending ports had a
/// handler.
pub fn deliver_pending(xen: &SimXen, dom: &DomainHandle) -> usize {
    let mut delivered = 0;
    for port in 1..64 {
        if xen_tests::blk::sim::take_pending(dom, port) && xen.deliver(port) {
            delivered += 1;
        }
    }
    delivered
}

/// Delivers an event on every port `1..64`, pending or not: a peer's storm of notifications,
/// or one that a forged ring index came without.
pub fn deliver_all(xen: &SimXen) {
    for port in 1..64 {
        xen.deliver(port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_tests::xensim::SimConfig;

    fn dom() -> &'static DomainHandle {
        let sim = Box::leak(Box::new(SimHypervisor::new(SimConfig::default())));
        Box::leak(Box::new(
            sim.create_domain(DomainConfig::guest()).expect("guest"),
        ))
    }

    #[test]
    fn runs_are_contiguous_zeroed_and_the_other_pages_go_back() {
        let d = dom();
        let mem = SimMemory(d);
        let (one, g1) = mem.alloc(1).expect("a page");
        assert_eq!(one.len(), 4096);
        // Dirty pages given back are zeroed when handed out again.
        one.fill(0, 4096, 0xa5).unwrap();
        mem.free(g1, 1);
        let (one, g1) = mem.alloc(1).expect("a page");
        let mut bytes = std::vec![0xffu8; 4096];
        one.copy_to_slice(0, &mut bytes).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
        let (run, g) = mem.alloc(3).expect("a run of 3");
        assert_eq!(run.len(), 3 * 4096);
        let mut bytes = std::vec![0xffu8; 3 * 4096];
        run.copy_to_slice(0, &mut bytes).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
        assert!(!(g..g + 3).contains(&g1));
        mem.free(g, 3);
        mem.free(g1, 1);
        assert!(mem.alloc(0).is_none());
    }

    #[test]
    fn dom0_and_guest_have_the_ids_and_memory_asked_for() {
        let sim = Box::leak(Box::new(SimHypervisor::new(SimConfig::default())));
        let (dom0, guest) = dom0_and_guest(sim, 64, 7, 32);
        assert_eq!((dom0.domid(), guest.domid()), (0, 7));
        // Free pages: the RAM asked for less what every domain keeps for itself.
        let pages = |d: &DomainHandle| core::iter::from_fn(|| d.alloc_page()).take(100).count();
        let (a, b) = (pages(dom0), pages(guest));
        assert!(b > 0 && a < 64, "{a} {b}");
        assert_eq!(a - b, 64 - 32);
    }

    #[test]
    fn slots_are_reserved_and_released() {
        let mem = SimMemory(dom());
        let a = mem.reserve_slot().expect("slot");
        let b = mem.reserve_slot().expect("slot");
        assert_ne!(a, b);
        assert_eq!(a % 4096, 0);
        mem.release_slot(a);
        mem.release_slot(b);
    }
}
