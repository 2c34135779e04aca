//! Module load/unload: the safe [`KernelModule`] trait a module crate implements, and the
//! `extern "C"` trampolines its C shim's module event handler calls.
//!
//! The C shim (`freebsd-build/include/xenrs_module.h`) declares the module with
//! `DECLARE_MODULE`/`MODULE_VERSION`/`MODULE_DEPEND` against the real FreeBSD headers and
//! forwards the events: `MOD_LOAD` → `xenrs_<m>_load`, `MOD_QUIESCE` → `xenrs_<m>_quiesce`,
//! `MOD_UNLOAD` → `xenrs_<m>_unload`. [`kernel_module!`](crate::kernel_module) defines those
//! three functions (and `xenrs_<m>_stat` for the module's sysctl leaves) over a [`ModuleSlot`].
//! The driver modules keep their attached-device count and xen.ko registration in a
//! [`LiveDevices`], which answers their `quiesce`, `unload` and `stat`.
//!
//! `kldunload` sends `MOD_QUIESCE` and, unless forced, gives up when it fails; `kldunload -f`
//! goes on to `MOD_UNLOAD` regardless. Unloading code that a callback can still enter would
//! crash the machine, so `MOD_UNLOAD` asks [`KernelModule::quiesce`] again and refuses with
//! `EBUSY` even when forced.

use core::cell::UnsafeCell;
use core::ffi::c_int;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crate::errno::Errno;
use alloc_crate::sync::Arc;

/// What a kernel module does when it is loaded and unloaded.
pub trait KernelModule: Sized + Send + Sync + 'static {
    /// The module's name, as in its `DECLARE_MODULE` (used in messages).
    const NAME: &'static str;

    /// `MOD_LOAD`: set everything up; the value lives until [`KernelModule::unload`].
    ///
    /// # Errors
    /// The errno `kldload` reports; the module is then unloaded without `unload`.
    fn load() -> Result<Self, Errno>;

    /// Whether the module may be unloaded now.
    ///
    /// # Errors
    /// `EBUSY` (or another errno) refuses the unload; the module stays loaded and usable.
    fn quiesce(&self) -> Result<(), Errno> {
        Ok(())
    }

    /// `MOD_UNLOAD`, after `quiesce` succeeded: release everything.
    fn unload(self) {}

    /// Leaf `which` of the module's numeric sysctls, `None` when it has no such leaf.
    fn stat(&self, which: u32) -> Option<u64> {
        let _ = which;
        None
    }
}

/// Slot states; the low bits of a `LOADED` slot count readers.
const EMPTY: u32 = 0;
const CHANGING: u32 = 1 << 30;
const LOADED: u32 = 1 << 31;
const READERS: u32 = CHANGING - 1;

/// The one instance of a loaded module.
///
/// # Invariants
/// `value` is initialised exactly when `state & LOADED` is set; while the low bits are
/// non-zero, that many [`Reader`]s hold `&M` into it and it is neither dropped nor moved.
/// `CHANGING` marks a load or unload in progress: nobody else touches `value` then.
#[derive(Debug)]
pub struct ModuleSlot<M> {
    state: AtomicU32,
    value: UnsafeCell<MaybeUninit<M>>,
}

// SAFETY: `value` is written only by the thread that moved the state to CHANGING (exclusive by
// the compare-exchange), and shared as `&M` only under reader counts, so `M: Send + Sync`
// makes sharing the slot sound.
unsafe impl<M: Send + Sync> Sync for ModuleSlot<M> {}

impl<M: KernelModule> ModuleSlot<M> {
    #[must_use]
    pub const fn new() -> ModuleSlot<M> {
        ModuleSlot {
            state: AtomicU32::new(EMPTY),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        }
    }

    /// `MOD_LOAD`.
    ///
    /// # Errors
    /// `EEXIST` when already loaded (or being loaded), else what [`KernelModule::load`] says.
    pub fn load(&self) -> Result<(), Errno> {
        self.state
            .compare_exchange(EMPTY, CHANGING, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Errno::EEXIST)?;
        match M::load() {
            Ok(module) => {
                // SAFETY: the state is CHANGING, which only we could set: no reader and no
                // other writer exists, and the slot was EMPTY (uninitialised).
                unsafe { (*self.value.get()).write(module) };
                // INVARIANT: initialised above, published with Release.
                self.state.store(LOADED, Ordering::Release); // <-- release
                Ok(())
            }
            Err(errno) => {
                self.state.store(EMPTY, Ordering::Release);
                Err(errno)
            }
        }
    }

    /// `MOD_QUIESCE`: 0 when not loaded (nothing to keep), else [`KernelModule::quiesce`].
    ///
    /// # Errors
    /// What `quiesce` says.
    pub fn quiesce(&self) -> Result<(), Errno> {
        self.with(M::quiesce).unwrap_or(Ok(()))
    }

    /// `MOD_UNLOAD`.
    ///
    /// # Errors
    /// `EBUSY` while a reader (a sysctl handler) is inside the module or `quiesce` refuses;
    /// the module then stays loaded.
    pub fn unload(&self) -> Result<(), Errno> {
        match self
            .state
            .compare_exchange(LOADED, CHANGING, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => {}
            Err(EMPTY) => return Ok(()),
            Err(_) => return Err(Errno::EBUSY),
        }
        // SAFETY: state CHANGING (set by us from LOADED with no readers): initialised, and
        // nobody else holds a reference.
        let module = unsafe { (*self.value.get()).assume_init_ref() };
        if let Err(errno) = module.quiesce() {
            self.state.store(LOADED, Ordering::Release);
            return Err(errno);
        }
        // SAFETY: as above; the value is moved out once, and the state becomes EMPTY
        // (uninitialised) right after, before anyone can look again.
        let module = unsafe { (*self.value.get()).assume_init_read() };
        // INVARIANT: moved out above.
        self.state.store(EMPTY, Ordering::Release);
        module.unload();
        Ok(())
    }

    /// Runs `f` on the loaded module; `None` when it is not loaded (or loading/unloading).
    pub fn with<R>(&self, f: impl FnOnce(&M) -> R) -> Option<R> {
        let reader = self.reader()?;
        Some(f(reader.module))
    }

    fn reader(&self) -> Option<Reader<'_, M>> {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & LOADED == 0 || state & READERS == READERS {
                return None;
            }
            match self.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        // SAFETY: LOADED with our reader counted: initialised, and it stays so until the
        // count drops (unload needs zero readers).
        let module = unsafe { (*self.value.get()).assume_init_ref() };
        Some(Reader { slot: self, module })
    }

    /// Whether the module is loaded.
    pub fn is_loaded(&self) -> bool {
        self.state.load(Ordering::Acquire) & LOADED != 0
    }
}

impl<M: KernelModule> Default for ModuleSlot<M> {
    fn default() -> Self {
        ModuleSlot::new()
    }
}

/// A counted reference into a loaded slot.
struct Reader<'a, M> {
    slot: &'a ModuleSlot<M>,
    module: &'a M,
}

impl<M> Drop for Reader<'_, M> {
    fn drop(&mut self) {
        self.slot.state.fetch_sub(1, Ordering::Release);
    }
}

/// The C side of `MOD_LOAD`.
pub fn load_to_c<M: KernelModule>(slot: &ModuleSlot<M>) -> c_int {
    let result = slot.load();
    if let Err(errno) = result {
        crate::kprintln!("{}: load failed: {errno}", M::NAME);
    }
    Errno::result_to_c(result)
}

/// The C side of `MOD_QUIESCE`.
pub fn quiesce_to_c<M: KernelModule>(slot: &ModuleSlot<M>) -> c_int {
    Errno::result_to_c(slot.quiesce())
}

/// The C side of `MOD_UNLOAD`.
pub fn unload_to_c<M: KernelModule>(slot: &ModuleSlot<M>) -> c_int {
    let result = slot.unload();
    if let Err(errno) = result {
        crate::kprintln!("{}: unload refused: {errno}", M::NAME);
    }
    Errno::result_to_c(result)
}

/// The C side of a numeric sysctl leaf: stores the value through `out`.
///
/// # Safety
/// `out` is valid for a write of a `u64` (the shim passes the address of a local).
pub unsafe fn stat_to_c<M: KernelModule>(
    slot: &ModuleSlot<M>,
    which: c_int,
    out: *mut u64,
) -> c_int {
    let Ok(which) = u32::try_from(which) else {
        return Errno::ENOENT.to_raw();
    };
    match slot.with(|module| module.stat(which)) {
        None => Errno::ENXIO.to_raw(),
        Some(None) => Errno::ENOENT.to_raw(),
        Some(Some(value)) => {
            // SAFETY: valid for a u64 write, by the caller's contract.
            unsafe { out.write(value) };
            0
        }
    }
}

/// What a driver module keeps of what it registered with xen.ko: the count of the devices its
/// driver has attached and the registration itself, with the [`KernelModule`] methods that only
/// look at them.
///
/// The driver gets the counter ([`LiveDevices::counter`]) and moves it up on attach and down
/// once a device is fully gone. `kldunload` is refused (`EBUSY`, with a console line naming the
/// module and its devices) while the count is not zero: unloading would pull the devices from
/// under their users. Unloading drops the registration, which stops the bus and detaches every
/// device, exactly once.
pub struct LiveDevices<R> {
    count: Arc<AtomicUsize>,
    registration: Option<R>,
    /// The module's name, for the refusal.
    module: &'static str,
    /// What its devices are called in the refusal (`"disk(s)"`).
    devices: &'static str,
}

impl<R> core::fmt::Debug for LiveDevices<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LiveDevices")
            .field("module", &self.module)
            .field(self.devices, &self.count())
            .field("registered", &self.registration.is_some())
            .finish()
    }
}

impl<R> LiveDevices<R> {
    /// No device and no registration yet; `module` and `devices` make the refusal
    /// (`"xbd: 2 disk(s) attached; detach them first"`).
    #[must_use]
    pub fn new(module: &'static str, devices: &'static str) -> LiveDevices<R> {
        LiveDevices {
            count: Arc::new(AtomicUsize::new(0)),
            registration: None,
            module,
            devices,
        }
    }

    /// The counter the driver moves as its devices come and go.
    #[must_use]
    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }

    /// Keeps the driver's registration until [`LiveDevices::unregister`] (or drop).
    #[must_use]
    pub fn registered(mut self, registration: R) -> LiveDevices<R> {
        self.registration = Some(registration);
        self
    }

    /// Devices attached now.
    #[must_use]
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// [`KernelModule::quiesce`]: refused while a device is attached.
    ///
    /// # Errors
    /// `EBUSY` while the count is not zero, after saying so on the console.
    pub fn quiesce(&self) -> Result<(), Errno> {
        match self.count() {
            0 => Ok(()),
            n => {
                crate::kprintln!(
                    "{}: {n} {} attached; detach them first",
                    self.module,
                    self.devices
                );
                Err(Errno::EBUSY)
            }
        }
    }

    /// [`KernelModule::unload`]: drops the registration (the bus stops and every device is
    /// detached) before the caller drops what the registration used. A second call finds
    /// nothing left to drop.
    pub fn unregister(&mut self) {
        drop(self.registration.take());
    }

    /// [`KernelModule::stat`]: leaf 0 is the count of attached devices.
    #[must_use]
    pub fn stat(&self, which: u32) -> Option<u64> {
        (which == 0).then(|| u64::try_from(self.count()).unwrap_or(u64::MAX))
    }
}

/// Defines a module's `extern "C"` entry points for its C shim over a static [`ModuleSlot`].
///
/// ```ignore
/// freebsd_kpi::kernel_module! {
///     XenModule,
///     load: xenrs_xen_load,
///     quiesce: xenrs_xen_quiesce,
///     unload: xenrs_xen_unload,
///     stat: xenrs_xen_stat,
/// }
/// ```
/// The names must match what `XENRS_MODULE(name, ...)` in the shim calls
/// (`xenrs_<name>_load` ...). The slot is reachable as `MODULE_SLOT` in the calling module.
#[macro_export]
macro_rules! kernel_module {
    ($ty:ty, load: $load:ident, quiesce: $quiesce:ident, unload: $unload:ident, stat: $stat:ident $(,)?) => {
        /// The loaded instance of this kernel module.
        pub static MODULE_SLOT: $crate::module::ModuleSlot<$ty> = $crate::module::ModuleSlot::new();

        /// `MOD_LOAD`, called by the C shim's module event handler.
        #[no_mangle]
        pub extern "C" fn $load() -> ::core::ffi::c_int {
            $crate::module::load_to_c(&MODULE_SLOT)
        }

        /// `MOD_QUIESCE`, called by the C shim's module event handler.
        #[no_mangle]
        pub extern "C" fn $quiesce() -> ::core::ffi::c_int {
            $crate::module::quiesce_to_c(&MODULE_SLOT)
        }

        /// `MOD_UNLOAD`, called by the C shim's module event handler.
        #[no_mangle]
        pub extern "C" fn $unload() -> ::core::ffi::c_int {
            $crate::module::unload_to_c(&MODULE_SLOT)
        }

        /// A numeric sysctl leaf, called by the C shim's handler.
        ///
        /// # Safety
        /// `out` is valid for a write of a `u64`.
        #[no_mangle]
        pub unsafe extern "C" fn $stat(
            which: ::core::ffi::c_int,
            out: *mut u64,
        ) -> ::core::ffi::c_int {
            // SAFETY: forwarded contract: `out` is valid for a u64 write.
            unsafe { $crate::module::stat_to_c(&MODULE_SLOT, which, out) }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicBool;

    static BUSY: AtomicBool = AtomicBool::new(false);
    static FAIL_LOAD: AtomicBool = AtomicBool::new(false);
    static UNLOADED: AtomicU32 = AtomicU32::new(0);

    #[derive(Debug)]
    struct Demo(u64);

    impl KernelModule for Demo {
        const NAME: &'static str = "demo";
        fn load() -> Result<Demo, Errno> {
            if FAIL_LOAD.load(Ordering::Relaxed) {
                Err(Errno::ENXIO)
            } else {
                Ok(Demo(7))
            }
        }
        fn quiesce(&self) -> Result<(), Errno> {
            if BUSY.load(Ordering::Relaxed) {
                Err(Errno::EBUSY)
            } else {
                Ok(())
            }
        }
        fn unload(self) {
            UNLOADED.fetch_add(1, Ordering::Relaxed);
        }
        fn stat(&self, which: u32) -> Option<u64> {
            (which == 0).then_some(self.0)
        }
    }

    #[test]
    fn lifecycle_refuses_busy_unload_and_double_load() {
        let _kernel = crate::fake::session();
        let slot = ModuleSlot::<Demo>::new();
        assert_eq!(slot.with(|m| m.0), None);
        assert_eq!(slot.load(), Ok(()));
        assert_eq!(slot.load(), Err(Errno::EEXIST));
        assert_eq!(slot.with(|m| m.0), Some(7));
        BUSY.store(true, Ordering::Relaxed);
        assert_eq!(slot.quiesce(), Err(Errno::EBUSY));
        assert_eq!(slot.unload(), Err(Errno::EBUSY));
        assert!(slot.is_loaded());
        BUSY.store(false, Ordering::Relaxed);
        assert_eq!(slot.quiesce(), Ok(()));
        let before = UNLOADED.load(Ordering::Relaxed);
        assert_eq!(slot.unload(), Ok(()));
        assert_eq!(UNLOADED.load(Ordering::Relaxed), before + 1);
        assert!(!slot.is_loaded());
        // A second unload (the kernel never sends one, but be safe) is a no-op.
        assert_eq!(slot.unload(), Ok(()));
        assert_eq!(slot.load(), Ok(()));
        assert_eq!(slot.unload(), Ok(()));
    }

    #[test]
    fn unload_waits_for_readers() {
        let _kernel = crate::fake::session();
        let slot = ModuleSlot::<Demo>::new();
        slot.load().unwrap();
        let result = slot.with(|_| slot.unload());
        assert_eq!(result, Some(Err(Errno::EBUSY)));
        assert_eq!(slot.unload(), Ok(()));
    }

    /// A registration that counts how often it was dropped.
    struct Registration(Arc<AtomicUsize>);

    impl Drop for Registration {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn live_devices_refuse_unload_while_attached_and_unregister_once() {
        let _kernel = crate::fake::session();
        let drops = Arc::new(AtomicUsize::new(0));
        let mut live =
            LiveDevices::new("demo", "widget(s)").registered(Registration(drops.clone()));
        let counter = live.counter();
        assert_eq!(
            (live.count(), live.stat(0), live.stat(1)),
            (0, Some(0), None)
        );
        counter.fetch_add(2, Ordering::AcqRel);
        assert_eq!((live.count(), live.stat(0)), (2, Some(2)));
        assert_eq!(live.quiesce(), Err(Errno::EBUSY));
        assert!(crate::fake::console().contains("demo: 2 widget(s) attached; detach them first"));
        counter.fetch_sub(1, Ordering::AcqRel);
        assert_eq!(live.quiesce(), Err(Errno::EBUSY));
        assert!(crate::fake::console().contains("demo: 1 widget(s) attached"));
        counter.fetch_sub(1, Ordering::AcqRel);
        assert_eq!(live.quiesce(), Ok(()));
        assert_eq!(drops.load(Ordering::Relaxed), 0);
        live.unregister();
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        live.unregister();
        drop(live);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
        // Never registered: unregistering and dropping drop nothing.
        let mut empty = LiveDevices::<Registration>::new("demo", "widget(s)");
        empty.unregister();
        drop(empty);
        assert_eq!(drops.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn failed_load_leaves_the_slot_empty() {
        let _kernel = crate::fake::session();
        let slot = ModuleSlot::<Demo>::new();
        FAIL_LOAD.store(true, Ordering::Relaxed);
        assert_eq!(load_to_c(&slot), 6);
        FAIL_LOAD.store(false, Ordering::Relaxed);
        assert!(!slot.is_loaded());
        assert!(crate::fake::console().contains("demo: load failed: ENXIO(6)"));
        let mut out = 0;
        // SAFETY: `out` is a live local.
        assert_eq!(unsafe { stat_to_c(&slot, 0, &mut out) }, 6);
        assert_eq!(load_to_c(&slot), 0);
        // SAFETY: as above.
        assert_eq!(unsafe { stat_to_c(&slot, 0, &mut out) }, 0);
        assert_eq!(out, 7);
        // SAFETY: as above.
        assert_eq!(unsafe { stat_to_c(&slot, 1, &mut out) }, 2);
        assert_eq!(unload_to_c(&slot), 0);
    }
}
