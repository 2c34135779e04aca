//! The block drivers' platforms over `xensim`: a backend domain and a frontend domain, with
//! their grant operations, pages, event channels and logs.
//!
//! Events are observed the way a guest's upcall handler does: the port's bit in the
//! domain's `shared_info` `evtchn_pending` bitmap, taken (test-and-clear) by
//! [`take_pending`]. The harness services a driver only when its port is pending, so a lost
//! notification shows up as a stall rather than being papered over by polling.
#![expect(
    clippy::cast_possible_truncation,
    reason = "host-only test code: sector and page arithmetic in a 64-bit usize"
)]

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use xen_blkback::env::{BackendEnv, Level, LocalPage};
use xen_blkfront::env::{FrontendEnv, PageRun};
use xen_gnttab::{GrantError, GrantRef, GrantTable, Revoke, StillInUse};
use xen_kmod::{EventChannelOp, Hypervisor, XenError};
use xen_shmem::SharedMem;
use xen_sys::x86_64 as abi;

use crate::xensim::grants::SimTableFrames;
use crate::xensim::DomainHandle;

const PAGE: u64 = 4096;

/// A shared log of driver messages (both sides), for assertions and for debugging
/// (`BLK_LOG=1` also prints them).
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Appends a line.
    pub fn push(&self, who: &str, level: Level, msg: fmt::Arguments<'_>) {
        let line = format!("[{who} {level:?}] {msg}");
        if std::env::var_os("BLK_LOG").is_some() {
            eprintln!("{line}");
        }
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }

    /// All lines so far.
    #[must_use]
    pub fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether some line contains `needle`.
    #[must_use]
    pub fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }
}

/// Test-and-clears `port`'s pending bit in `dom`'s `shared_info` (what the upcall handler
/// does before calling the driver).
#[must_use]
pub fn take_pending(dom: &DomainHandle, port: u32) -> bool {
    let base = core::mem::offset_of!(abi::shared_info, evtchn_pending);
    let off = base + (port / 32) as usize * 4;
    let bit = 1u32 << (port % 32);
    let si = dom.shared_info();
    match si.u32_at(off) {
        Ok(w) => w.fetch_and(!bit, Ordering::SeqCst) & bit != 0,
        Err(_) => false,
    }
}

/// Whether `port` is pending, without clearing it.
#[must_use]
pub fn is_pending(dom: &DomainHandle, port: u32) -> bool {
    let base = core::mem::offset_of!(abi::shared_info, evtchn_pending);
    let off = base + (port / 32) as usize * 4;
    let bit = 1u32 << (port % 32);
    dom.shared_info()
        .u32_at(off)
        .is_ok_and(|w| w.load(Ordering::SeqCst) & bit != 0)
}

/// A view of `count` guest frames from `gfn` that are backed by consecutive machine frames
/// (RAM allocated in a run, or foreign mappings of such a run), as one [`SharedMem`].
#[must_use]
pub fn contiguous_view(dom: &DomainHandle, gfn: u64, count: u32) -> Option<SharedMem<'_>> {
    let machine = dom.sim().machine();
    let base = machine.pages.as_ptr() as usize;
    let first = dom.page_any(gfn)?.as_ptr() as usize;
    for i in 1..u64::from(count) {
        let p = dom.page_any(gfn + i)?.as_ptr() as usize;
        if p != first + (i as usize) * PAGE as usize {
            return None;
        }
    }
    let mfn = (first - base) / PAGE as usize;
    machine.view(mfn, count as usize)
}

fn evtchn(dom: &DomainHandle, op: EventChannelOp<'_>) -> Result<(), XenError> {
    dom.event_channel_op(op)
}

/// Sends an event on `port` of `dom`.
pub fn send(dom: &DomainHandle, port: u32) {
    let mut s = abi::evtchn_send { port };
    let _ = evtchn(dom, EventChannelOp::Send(&mut s));
}

/// Closes `port` of `dom`.
pub fn close(dom: &DomainHandle, port: u32) {
    let mut c = abi::evtchn_close { port };
    let _ = evtchn(dom, EventChannelOp::Close(&mut c));
}

/// The backend's platform: a (privileged) domain of the simulator.
#[derive(Debug, Clone)]
pub struct SimBackEnv {
    /// The backend domain.
    pub dom: &'static DomainHandle,
    /// Where log lines go.
    pub log: Log,
}

impl SimBackEnv {
    /// The platform of `dom`.
    #[must_use]
    pub fn new(dom: &'static DomainHandle, log: Log) -> Self {
        SimBackEnv { dom, log }
    }
}

impl BackendEnv<'static> for SimBackEnv {
    type Hv = DomainHandle;

    fn hypervisor(&self) -> &DomainHandle {
        self.dom
    }

    fn reserve_slots(&self, count: u32) -> Option<u64> {
        self.dom.reserve_gfns(u64::from(count)).map(|g| g * PAGE)
    }

    fn release_slots(&self, host_addr: u64, count: u32) {
        self.dom.release_gfns(host_addr / PAGE, u64::from(count));
    }

    fn view(&self, host_addr: u64, pages: u32) -> Option<SharedMem<'static>> {
        if host_addr % PAGE != 0 {
            return None;
        }
        if pages == 1 {
            self.dom.page_any(host_addr / PAGE)
        } else {
            contiguous_view(self.dom, host_addr / PAGE, pages)
        }
    }

    fn alloc_page(&self) -> Option<LocalPage<'static>> {
        let gfn = self.dom.alloc_page()?;
        Some(LocalPage {
            gfn,
            mem: self.dom.page(gfn)?,
        })
    }

    fn free_page(&self, page: LocalPage<'static>) {
        self.dom.free_page(page.gfn);
    }

    fn bind_interdomain(&self, remote_dom: u16, remote_port: u32) -> Result<u32, XenError> {
        let mut b = abi::evtchn_bind_interdomain {
            remote_dom,
            remote_port,
            local_port: 0,
            ..Default::default()
        };
        evtchn(self.dom, EventChannelOp::BindInterdomain(&mut b))?;
        Ok(b.local_port)
    }

    fn notify(&self, port: u32) {
        send(self.dom, port);
    }

    fn close_port(&self, port: u32) {
        close(self.dom, port);
    }

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        self.log.push("blkback", level, msg);
    }
}

/// The frontend's platform: a guest of the simulator with its own grant table.
pub struct SimFrontEnv {
    /// The frontend domain.
    pub dom: &'static DomainHandle,
    /// Its grant table (the real `xen-gnttab` one).
    pub table: GrantTable<'static, &'static DomainHandle, SimTableFrames<'static>>,
    /// Where log lines go.
    pub log: Log,
}

impl fmt::Debug for SimFrontEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFrontEnv")
            .field("dom", &self.dom.domid())
            .field("table", &self.table)
            .finish()
    }
}

impl SimFrontEnv {
    /// The platform of `dom`, with a fresh grant table.
    ///
    /// # Panics
    /// If the simulator refuses the grant table (a broken test set-up).
    #[must_use]
    pub fn new(dom: &'static DomainHandle, log: Log) -> Self {
        let table = GrantTable::new(dom, SimTableFrames::new(dom), 4)
            .unwrap_or_else(|e| panic!("grant table: {e}"));
        SimFrontEnv { dom, table, log }
    }

    /// Runs the deferred revocations; pages whose grants ended go back to the allocator.
    pub fn poll_deferred(&self) -> xen_gnttab::DeferredPoll {
        self.table
            .poll_deferred(|gfn| self.dom.free_page(u64::from(gfn)))
    }
}

impl FrontendEnv<'static> for SimFrontEnv {
    fn grant(&self, domid: u16, gfn: u64, readonly: bool) -> Result<GrantRef, GrantError> {
        self.table.grant(domid, gfn, readonly)
    }

    fn end_access(&self, r: &GrantRef) -> Result<(), StillInUse> {
        self.table.end_access(r)
    }

    fn revoke(&self, r: GrantRef) -> Revoke {
        self.table.revoke(r)
    }

    fn alloc_pages(&self, count: u32) -> Option<PageRun<'static>> {
        if count == 1 {
            let gfn = self.dom.alloc_page()?;
            return Some(PageRun {
                gfn,
                count: 1,
                mem: self.dom.page(gfn)?,
            });
        }
        // A run of consecutive frames (RAM frames are consecutive in machine memory too):
        // take pages until `count` of them are consecutive, give the others back.
        let mut got: Vec<u64> = Vec::new();
        let mut found = None;
        for _ in 0..4096 {
            let Some(g) = self.dom.alloc_page() else {
                break;
            };
            got.push(g);
            got.sort_unstable();
            for w in got.windows(count as usize) {
                if let (Some(&a), Some(&b)) = (w.first(), w.last()) {
                    if b - a == u64::from(count) - 1 {
                        found = Some(a);
                    }
                }
            }
            if found.is_some() {
                break;
            }
        }
        let first = found?;
        for &g in &got {
            if g < first || g >= first + u64::from(count) {
                self.dom.free_page(g);
            }
        }
        let mem = contiguous_view(self.dom, first, count)?;
        mem.zero_all();
        Some(PageRun {
            gfn: first,
            count,
            mem,
        })
    }

    fn free_pages(&self, run: PageRun<'static>) {
        for i in 0..u64::from(run.count) {
            self.dom.free_page(run.gfn + i);
        }
    }

    fn alloc_unbound(&self, remote: u16) -> Result<u32, XenError> {
        let mut a = abi::evtchn_alloc_unbound {
            dom: xen_kmod::DOMID_SELF,
            remote_dom: remote,
            port: 0,
        };
        evtchn(self.dom, EventChannelOp::AllocUnbound(&mut a))?;
        Ok(a.port)
    }

    fn notify(&self, port: u32) {
        send(self.dom, port);
    }

    fn close_port(&self, port: u32) {
        close(self.dom, port);
    }

    fn log(&self, level: Level, msg: fmt::Arguments<'_>) {
        self.log.push("blkfront", level, msg);
    }
}

/// Leaks a domain handle so drivers can borrow it for `'static` (test-only; a handle is a
/// few bytes).
#[must_use]
pub fn leak(dom: DomainHandle) -> &'static DomainHandle {
    Box::leak(Box::new(dom))
}
