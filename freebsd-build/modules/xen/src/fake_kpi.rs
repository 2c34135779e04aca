//! Host-test fakes of the shim's KPI functions (`kpi.rs`) and a scripted hypervisor: they
//! record what bring-up acquired (pages, mappings, threads, upcall) so a test can check that
//! unload or a failed load leaves nothing behind, and fail on request so every unwinding
//! path runs.
#![allow(
    unsafe_code,
    reason = "fake C entry points, called as the kernel would"
)]

use core::ffi::{c_int, c_void};
use std::collections::BTreeMap;
use std::sync::Mutex;

use xen_kmod::{
    EventChannelOp, GrantTableOp, HvmOp, Hypervisor, MemoryOp, SchedOp, VcpuOp, XenError,
    XenVersionOp,
};

/// What the fake kernel holds for xen.ko.
#[derive(Debug, Default)]
pub struct State {
    /// Live page runs: address -> (layout, npages).
    pub pages: BTreeMap<usize, (std::alloc::Layout, u32)>,
    pub frames_mapped: usize,
    pub threads: bool,
    pub upcall: bool,
    pub kicks: [u64; 2],
    /// Raw hypercalls through the exported trap: (op, args).
    pub raw_calls: Vec<(u32, [usize; 5])>,
    /// Delayed kicks: (task, ms).
    pub later: Vec<(c_int, u32)>,
    /// Fail the n-th page allocation (0-based), if set.
    pub fail_page_alloc: Option<u32>,
    pub page_allocs: u32,
    pub fail_threads: bool,
    pub fail_upcall: bool,
    pub fail_map_frame: bool,
    /// Hypervisor operations to fail (by name).
    pub fail_ops: Vec<&'static str>,
    pub next_port: u32,
    pub closed: Vec<u32>,
    pub cdevs: bool,
    /// `EVTCHNOP_init_control` calls (FIFO attempts).
    pub init_control: u32,
    /// The kinds of node created.
    pub cdev_mask: u32,
    /// What `HVM_PARAM_STORE_PFN` reads (0: a control domain before xenstored).
    pub store_pfn: u64,
    pub fail_cdevs: bool,
    /// Next guest-physical address handed out (small, as a guest's are: grant v1 frames are
    /// 32-bit).
    pub next_pa: u64,
    /// Wake-ups of open files (by cookie address).
    pub wakeups: Vec<usize>,
    /// `HVMOP_set_param` calls: (index, value).
    pub params: Vec<(u32, u64)>,
    pub sent: Vec<u32>,
    /// Frames handed to Xen and not populated again (decrease − populate).
    pub frames_given: i64,
    /// Foreign grants mapped and not unmapped.
    pub grants_mapped: i64,
    /// The calling process's gntdev mappings: address -> (the shim's object handle, size).
    pub gntdev_vm: BTreeMap<u64, (u64, u64)>,
    /// Foreign frames mapped by XENMEM_add_to_physmap_batch.
    pub foreign_mapped: i64,
    /// `mp_ncpus` (0 means 1).
    pub ncpus: u32,
    /// The platform PCI device is absent (PVH).
    pub no_pci: bool,
    /// The fake kernel's interrupt machinery for the vector upcall: `num_io_irqs`,
    /// `first_msi_irq`, `num_msi_irqs`, and the IRQs with a registered source (the I/O
    /// APIC's, set by `reset`).
    pub irq_space: (u32, u32, u32),
    pub irq_sources: std::collections::BTreeSet<u32>,
    /// The source xen.ko registered (it outlives a module load, as in FreeBSD).
    pub vec_source: Option<u32>,
    pub vec_source_creates: u32,
    pub fail_vec_source: bool,
    /// The upcall filter is installed on it.
    pub vec_handler: bool,
    /// Vectors allocated on the boot CPU's APIC: vector -> IRQ; and those enabled.
    pub vectors: BTreeMap<u32, u32>,
    pub vectors_enabled: std::collections::BTreeSet<u32>,
    pub fail_vector_alloc: bool,
    /// Interrupts taken: EOIs sent, strays (a vector no source owns, or a source without
    /// a handler).
    pub eois: u32,
    pub strays: u32,
    /// `HVMOP_set_evtchn_upcall_vector` calls accepted: (vcpu, vector).
    pub upcall_vectors: Vec<(u32, u8)>,
}

pub static STATE: Mutex<Option<State>> = Mutex::new(None);

pub fn state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    let mut g = STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    f(g.get_or_insert_with(State::default))
}

pub fn reset() {
    *STATE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(State {
        next_port: 10,
        store_pfn: 0xfeffc,
        // One I/O APIC with 48 pins (as Xen's HVM guests have), then the default 512 MSI
        // IRQs (`machdep.num_msi_irqs`).
        irq_space: (48 + 512, 48, 512),
        irq_sources: (0..48).collect(),
        ..State::default()
    });
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_pages_alloc(npages: u32, _exec: c_int, paddr: *mut u64) -> *mut c_void {
    let fail = state(|s| {
        let n = s.page_allocs;
        s.page_allocs += 1;
        s.fail_page_alloc == Some(n)
    });
    if fail || npages == 0 {
        return core::ptr::null_mut();
    }
    let layout = std::alloc::Layout::from_size_align(4096 * npages as usize, 4096).unwrap();
    // SAFETY: non-zero size.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    let pa = state(|s| {
        s.pages.insert(p.addr(), (layout, npages));
        let pa = s.next_pa.max(0x10_0000);
        s.next_pa = pa + 4096 * u64::from(npages);
        pa
    });
    // SAFETY: the caller passes a writable out-pointer.
    unsafe { paddr.write(pa) };
    p.cast()
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_pages_free(va: *mut c_void, npages: u32, _exec: c_int) {
    let (layout, n) = state(|s| s.pages.remove(&va.addr())).expect("freeing pages not handed out");
    assert_eq!(n, npages, "freed with a different page count");
    // SAFETY: allocated above with this layout.
    unsafe { std::alloc::dealloc(va.cast(), layout) };
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_map_frame(_paddr: u64) -> *mut c_void {
    if state(|s| s.fail_map_frame) {
        return core::ptr::null_mut();
    }
    state(|s| s.frames_mapped += 1);
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: non-zero size.
    unsafe { std::alloc::alloc_zeroed(layout) }.cast()
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_unmap_frame(va: *mut c_void) {
    state(|s| s.frames_mapped -= 1);
    let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
    // SAFETY: allocated by xenrs_kpi_map_frame with this layout.
    unsafe { std::alloc::dealloc(va.cast(), layout) };
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_threads_start() -> c_int {
    if state(|s| s.fail_threads) {
        return 12;
    }
    state(|s| s.threads = true);
    0
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_threads_stop() {
    state(|s| {
        assert!(s.threads, "threads stopped twice");
        s.threads = false;
    });
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_kick(which: c_int) {
    state(|s| s.kicks[usize::try_from(which).unwrap()] += 1);
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_kick_after(which: c_int, ms: u32) {
    state(|s| s.later.push((which, ms)));
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_upcall_setup(mode: c_int, at: *mut u32) -> c_int {
    if state(|s| s.fail_upcall) {
        return 6;
    }
    if mode != 2 {
        // As the shim: only the platform PCI interrupt exists in this build.
        return 45;
    }
    state(|s| s.upcall = true);
    // SAFETY: writable out-pointer.
    unsafe { at.write(11) };
    0
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_upcall_teardown() {
    state(|s| {
        assert!(s.upcall, "upcall torn down twice");
        s.upcall = false;
    });
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_upcall_pci_present() -> c_int {
    c_int::from(!state(|s| s.no_pci))
}

/// # Safety
/// Writable out-pointers.
#[no_mangle]
pub unsafe extern "C" fn xenrs_kpi_irq_space(
    num_io: *mut u32,
    first_msi: *mut u32,
    num_msi: *mut u32,
) {
    let (a, b, c) = state(|s| s.irq_space);
    // SAFETY: the caller's out-pointers.
    unsafe {
        num_io.write(a);
        first_msi.write(b);
        num_msi.write(c);
    }
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_irq_used(irq: u32) -> c_int {
    c_int::from(state(|s| s.irq_sources.contains(&irq)))
}

/// # Safety
/// Writable out-pointer.
#[no_mangle]
pub unsafe extern "C" fn xenrs_kpi_vec_source_find(irq: *mut u32) -> c_int {
    match state(|s| s.vec_source) {
        Some(i) => {
            // SAFETY: the caller's out-pointer.
            unsafe { irq.write(i) };
            0
        }
        None => 2,
    }
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_vec_source_create(irq: u32) -> c_int {
    state(|s| {
        if s.fail_vec_source {
            return 17;
        }
        assert!(s.vec_source.is_none(), "a second source registered");
        assert!(irq < s.irq_space.0, "IRQ beyond num_io_irqs");
        assert!(s.irq_sources.insert(irq), "IRQ {irq} already has a source");
        s.vec_source = Some(irq);
        s.vec_source_creates += 1;
        0
    })
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_vec_handler_add() -> c_int {
    state(|s| {
        assert!(
            s.vec_source.is_some() && !s.vec_handler,
            "handler added out of order"
        );
        s.vec_handler = true;
    });
    0
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_vec_handler_remove() {
    state(|s| {
        assert!(s.vec_handler, "handler removed twice");
        assert!(
            !s.vectors.values().any(|i| Some(*i) == s.vec_source),
            "handler removed while a vector still leads to it"
        );
        s.vec_handler = false;
    });
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_bsp_apic_id() -> u32 {
    0
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_apic_alloc_vector(apic_id: u32, irq: u32) -> u32 {
    assert_eq!(apic_id, 0);
    state(|s| {
        if s.fail_vector_alloc {
            return 0;
        }
        // APIC_IO_INTS is 48; the first few are taken by the I/O APIC's pins.
        let v = (0x38..0xef)
            .find(|v| !s.vectors.contains_key(v))
            .unwrap_or(0);
        if v != 0 {
            s.vectors.insert(v, irq);
        }
        v
    })
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_apic_enable_vector(apic_id: u32, vector: u32) {
    assert_eq!(apic_id, 0);
    state(|s| {
        assert!(
            s.vectors.contains_key(&vector),
            "enabling a vector not allocated"
        );
        s.vectors_enabled.insert(vector);
    });
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_apic_free_vector(apic_id: u32, vector: u32, irq: u32) {
    assert_eq!(apic_id, 0);
    state(|s| {
        assert_eq!(s.vectors.remove(&vector), Some(irq), "IRQ mismatch");
        s.vectors_enabled.remove(&vector);
    });
}

/// An interrupt on the boot CPU at `vector`, dispatched as FreeBSD's `lapic_handle_intr` ->
/// `intr_execute_handlers` would: the source the vector leads to, its filter (the shim's
/// `xenrs_upcall_filter`, which calls `xenrs_xen_upcall`), then the PIC's EOI; a vector or
/// source without a handler is a stray (acknowledged).
pub fn interrupt(vector: u32) {
    let ours = state(|s| {
        let irq = s.vectors.get(&vector).copied();
        let ours = irq.is_some()
            && irq == s.vec_source
            && s.vec_handler
            && s.vectors_enabled.contains(&vector);
        if !ours {
            s.strays += 1;
        }
        ours
    });
    if ours {
        crate::services::xenrs_xen_upcall();
    }
    state(|s| s.eois += 1);
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_uptime_ns() -> u64 {
    1_000_000
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_sleep(_chan: *const c_void, _ms: c_int) {}

#[no_mangle]
pub extern "C" fn xenrs_kpi_wakeup(_chan: *const c_void) {}

#[no_mangle]
pub extern "C" fn xenrs_kpi_ncpus() -> u32 {
    state(|s| s.ncpus).max(1)
}

/// A scripted hypervisor: enough of Xen for bring-up and the exported services.
#[derive(Debug)]
pub struct FakeHv;

fn fails(name: &str) -> bool {
    state(|s| s.fail_ops.contains(&name))
}

impl Hypervisor for FakeHv {
    fn event_channel_op(&self, op: EventChannelOp<'_>) -> Result<(), XenError> {
        if fails(op.name()) {
            return Err(XenError::EINVAL);
        }
        match op {
            EventChannelOp::InitControl(_) => {
                state(|s| s.init_control += 1);
                Err(XenError::ENOSYS)
            }
            EventChannelOp::AllocUnbound(a) => {
                a.port = state(|s| {
                    s.next_port += 1;
                    s.next_port
                });
                Ok(())
            }
            EventChannelOp::BindInterdomain(a) => {
                a.local_port = state(|s| {
                    s.next_port += 1;
                    s.next_port
                });
                Ok(())
            }
            EventChannelOp::Close(c) => {
                state(|s| s.closed.push(c.port));
                Ok(())
            }
            EventChannelOp::Send(c) => {
                state(|s| s.sent.push(c.port));
                Ok(())
            }
            _ => Ok(()),
        }
    }
    fn grant_table_op(&self, op: GrantTableOp<'_>) -> Result<(), XenError> {
        if fails(op.name()) {
            return Err(XenError::EINVAL);
        }
        match op {
            GrantTableOp::QuerySize(q) => {
                q.nr_frames = 1;
                q.max_nr_frames = 32;
                q.status = 0;
            }
            GrantTableOp::MapGrantRef(ops) => {
                for (i, o) in ops.iter_mut().enumerate() {
                    o.status = 0;
                    o.handle = u32::try_from(i).unwrap() + 1;
                }
                state(|s| s.grants_mapped += i64::try_from(ops.len()).unwrap());
            }
            GrantTableOp::UnmapGrantRef(ops) => {
                for o in ops.iter_mut() {
                    o.status = 0;
                }
                state(|s| s.grants_mapped -= i64::try_from(ops.len()).unwrap());
            }
            _ => {}
        }
        Ok(())
    }
    fn memory_op(&self, op: MemoryOp<'_>) -> Result<u64, XenError> {
        if fails(op.name()) {
            return Err(XenError::EINVAL);
        }
        match op {
            MemoryOp::DecreaseReservation { .. } => {
                state(|s| s.frames_given += 1);
                Ok(1)
            }
            MemoryOp::PopulatePhysmap { .. } => {
                state(|s| s.frames_given -= 1);
                Ok(1)
            }
            MemoryOp::RemoveFromPhysmap(_) => {
                state(|s| s.foreign_mapped -= 1);
                Ok(0)
            }
            _ => Ok(0),
        }
    }
    fn hvm_op(&self, op: HvmOp<'_>) -> Result<(), XenError> {
        match op {
            HvmOp::GetParam(p) => {
                if fails("GetParam") {
                    return Err(XenError::EINVAL);
                }
                p.value = if p.index == xen_sys::native::HVM_PARAM_STORE_EVTCHN {
                    1
                } else {
                    state(|s| s.store_pfn)
                };
                Ok(())
            }
            HvmOp::SetParam(p) => {
                if fails("SetParam") {
                    return Err(XenError::EINVAL);
                }
                state(|s| s.params.push((p.index, p.value)));
                Ok(())
            }
            HvmOp::SetEvtchnUpcallVector(a) => {
                if fails("SetEvtchnUpcallVector") {
                    return Err(XenError::ENOSYS);
                }
                let (vcpu, vector) = (a.vcpu, a.vector);
                state(|s| s.upcall_vectors.push((vcpu, vector)));
                Ok(())
            }
        }
    }
    fn sched_op(&self, _op: SchedOp<'_>) -> Result<u64, XenError> {
        Ok(0)
    }
    fn vcpu_op(&self, _vcpu: u32, _op: VcpuOp<'_>) -> Result<u64, XenError> {
        Ok(0)
    }
    fn xen_version(&self, op: XenVersionOp<'_>) -> Result<u64, XenError> {
        if fails("Version") {
            return Err(XenError::ENOSYS);
        }
        match op {
            XenVersionOp::Version => Ok((4 << 16) | 17),
            _ => Ok(0),
        }
    }
}

pub static FAKE_HV: FakeHv = FakeHv;

/// The raw trap of the tests: records the call; `__HYPERVISOR_dm_op` succeeds after
/// writing 0x5a into the first byte of every buffer (as a device model's reply would), any
/// other op is Xen's -ENOSYS.
pub fn raw_trap(call: &xen_kmod::arch::marshal::RawCall) -> isize {
    state(|s| s.raw_calls.push((call.op, call.args)));
    if call.op == xen_sys::native::__HYPERVISOR_memory_op && call.args[0] == 28 {
        // XENMEM_acquire_resource: a resource of 4 frames; nr_frames at 8, frame_list at 24.
        let nr = core::ptr::with_exposed_provenance_mut::<u32>(call.args[1] + 8);
        let list = core::ptr::with_exposed_provenance::<usize>(call.args[1] + 24);
        // SAFETY: the caller's live request.
        unsafe {
            if list.read() == 0 {
                nr.write(4);
            } else {
                let n = nr.read();
                state(|s| s.foreign_mapped += i64::from(n));
            }
        }
        return 0;
    }
    if call.op == xen_sys::native::__HYPERVISOR_memory_op && call.args[0] == 23 {
        // XENMEM_add_to_physmap_batch: foreign frame 0 does not exist (-ENOENT), the others
        // map. Layout: four u16, then the idxs, gpfns and errs pointers.
        let at = |i: usize| call.args[1] + 8 + i * core::mem::size_of::<usize>();
        // SAFETY: the caller's live batch struct and arrays of `size` entries.
        unsafe {
            let size =
                usize::from(core::ptr::with_exposed_provenance::<u16>(call.args[1] + 4).read());
            let idxs = core::ptr::with_exposed_provenance::<usize>(at(0)).read();
            let errs = core::ptr::with_exposed_provenance::<usize>(at(2)).read();
            for i in 0..size {
                let idx = core::ptr::with_exposed_provenance::<usize>(idxs)
                    .add(i)
                    .read();
                let e = if idx == 0 { -2 } else { 0 };
                core::ptr::with_exposed_provenance_mut::<i32>(errs)
                    .add(i)
                    .write(e);
                if e == 0 {
                    state(|s| s.foreign_mapped += 1);
                }
            }
        }
        return 0;
    }
    if call.op != xen_sys::native::__HYPERVISOR_dm_op {
        return -38;
    }
    let descs = core::ptr::with_exposed_provenance::<[usize; 2]>(call.args[2]);
    for i in 0..call.args[1] {
        // SAFETY: the caller's descriptor array of `args[1]` entries, each naming a live
        // buffer of its size (the contract of the hypercall).
        unsafe {
            let [ptr, len] = descs.add(i).read();
            if len > 0 {
                core::ptr::with_exposed_provenance_mut::<u8>(ptr).write(0x5a);
            }
        }
    }
    0
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_cdevs_create(mask: u32) -> c_int {
    if state(|s| s.fail_cdevs) {
        return 17;
    }
    state(|s| {
        s.cdevs = true;
        s.cdev_mask = mask;
    });
    0
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_cdevs_destroy() {
    state(|s| {
        assert!(s.cdevs, "devices destroyed twice");
        s.cdevs = false;
    });
}

#[no_mangle]
pub extern "C" fn xenrs_kpi_cfile_wakeup(cookie: *mut c_void) {
    state(|s| s.wakeups.push(cookie.addr()));
}

/// `copyin` over host memory: user addresses are host addresses in the tests; 0 is a fault.
#[no_mangle]
pub extern "C" fn xenrs_kpi_copyin(uaddr: u64, kaddr: *mut c_void, len: usize) -> c_int {
    let Some(src) = usize::try_from(uaddr).ok().filter(|a| *a != 0) else {
        return 14;
    };
    let src = core::ptr::with_exposed_provenance::<u8>(src);
    // SAFETY: tests pass addresses of live buffers of at least `len` bytes.
    unsafe { core::ptr::copy_nonoverlapping(src, kaddr.cast::<u8>(), len) };
    0
}

/// `copyout` over host memory (see `xenrs_kpi_copyin`).
#[no_mangle]
pub extern "C" fn xenrs_kpi_copyout(kaddr: *const c_void, uaddr: u64, len: usize) -> c_int {
    let Some(dst) = usize::try_from(uaddr).ok().filter(|a| *a != 0) else {
        return 14;
    };
    let dst = core::ptr::with_exposed_provenance_mut::<u8>(dst);
    // SAFETY: as in xenrs_kpi_copyin.
    unsafe { core::ptr::copy_nonoverlapping(kaddr.cast::<u8>(), dst, len) };
    0
}

/// The test thread's identity: a thread-local's address.
#[no_mangle]
pub extern "C" fn xenrs_kpi_curthread() -> *const c_void {
    std::thread_local!(static ME: u8 = const { 0 });
    ME.with(|m| core::ptr::from_ref(m).cast())
}

/// The shim's VM-map lookup for `IOCTL_GNTDEV_GET_OFFSET_FOR_VADDR`, over `gntdev_vm`.
///
/// # Safety
/// Both out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn xenrs_kpi_gntdev_lookup_vaddr(
    vaddr: u64,
    object: *mut u64,
    start: *mut u64,
    size: *mut u64,
) -> c_int {
    let hit = state(|s| {
        s.gntdev_vm
            .range(..=vaddr)
            .next_back()
            .filter(|(a, (_, n))| vaddr < *a + *n)
            .map(|(a, (o, n))| (*a, *o, *n))
    });
    match hit {
        Some((a, o, n)) => {
            // SAFETY: writable by the caller's contract.
            unsafe {
                object.write(o);
                start.write(a);
                size.write(n);
            }
            0
        }
        None => 2,
    }
}
