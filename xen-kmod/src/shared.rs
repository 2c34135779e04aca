//! `shared_info` and `vcpu_info`: the pages Xen writes asynchronously.
//!
//! Xen sets event-channel pending bits, per-vCPU selector bits and the upcall flag at any time,
//! from any physical CPU, with locked bit operations. The guest must therefore touch these pages
//! only with atomic operations, and never through a Rust reference (which would promise the
//! compiler that nothing else changes the memory). Everything here goes through
//! [`xen_shmem::SharedMem`] views and their atomic words ([`AtomicWord`]).
//!
//! # Where the memory comes from
//!
//! * `shared_info`: the guest picks a free guest frame (GFN) and asks Xen to map the page there
//!   with `XENMEM_add_to_physmap(XENMAPSPACE_shared_info, gpfn)` ([`SharedInfoMapping`]); the
//!   platform then maps that GFN and builds a [`SharedInfo`] view over it.
//! * `vcpu_info`: vCPUs `0..XEN_LEGACY_MAX_VCPUS` have a slot inside `shared_info`
//!   ([`SharedInfo::legacy_vcpu_info`]); any vCPU may instead register a 64-byte area of its own
//!   memory with `VCPUOP_register_vcpu_info` ([`register_vcpu_info`]) and view it with
//!   [`VcpuInfo::new`].

use core::mem::{offset_of, size_of};
use core::sync::atomic::Ordering;

use xen_shmem::{Error as ShmemError, SharedMem, SharedU32};
use xen_sys::native::{shared_info, vcpu_info, vcpu_time_info, xen_add_to_physmap, xen_ulong_t};

use crate::{Hypervisor, MemoryOp, VcpuOp, XenError, DOMID_SELF};

/// A 32-bit word of shared memory with atomic read-modify-write operations: a thin wrapper
/// over [`xen_shmem::SharedU32`] with the fixed orderings event channels need (`SeqCst`
/// read-modify-writes, because Xen's side uses locked instructions, which are full barriers).
#[derive(Clone, Copy, Debug)]
pub struct AtomicWord<'a>(SharedU32<'a>);

impl<'a> AtomicWord<'a> {
    /// The word at 4-aligned `offset` of `mem`.
    ///
    /// # Errors
    /// Out of bounds or misaligned offsets, as [`SharedMem::u32_at`].
    pub fn at(mem: &SharedMem<'a>, offset: usize) -> Result<Self, ShmemError> {
        mem.u32_at(offset).map(AtomicWord)
    }

    /// Atomic load.
    #[must_use]
    pub fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }
    /// Atomic store.
    pub fn store(&self, value: u32, order: Ordering) {
        self.0.store(value, order);
    }
    /// Atomic OR, returning the previous value.
    pub fn fetch_or(&self, bits: u32, order: Ordering) -> u32 {
        self.0.fetch_or(bits, order)
    }
    /// Atomic AND, returning the previous value.
    pub fn fetch_and(&self, bits: u32, order: Ordering) -> u32 {
        self.0.fetch_and(bits, order)
    }
    /// Atomic swap, returning the previous value.
    pub fn swap(&self, value: u32, order: Ordering) -> u32 {
        self.0.swap(value, order)
    }
    /// Atomic compare-and-exchange (strong), `SeqCst` on both paths. Callers bound their
    /// retry loops: the other side may change the word at will.
    ///
    /// # Errors
    /// The current value when it differs from `current`.
    pub fn compare_exchange(&self, current: u32, new: u32) -> Result<u32, u32> {
        self.0
            .compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
    }
}

/// A bitmap in shared memory addressed bit by bit (`evtchn_pending`, `evtchn_mask`).
///
/// Xen's bitmaps are arrays of `xen_ulong_t`; on little-endian x86 bit `n` of such an array is
/// bit `n % 32` of the 32-bit word `n / 32` whatever the width of `xen_ulong_t`, so 32-bit
/// atomics address the same bits Xen's 64-bit `lock bts` does.
#[derive(Clone, Copy, Debug)]
pub struct SharedBitmap<'a> {
    mem: SharedMem<'a>,
    bits: u32,
}

impl<'a> SharedBitmap<'a> {
    /// A bitmap of `bits` bits over `mem` (which must hold them).
    ///
    /// # Errors
    /// `mem` shorter than `bits` rounded up to whole 32-bit words.
    pub fn new(mem: SharedMem<'a>, bits: u32) -> Result<Self, ShmemError> {
        let words = bits.div_ceil(32) as usize;
        let mem = mem.subrange(0, words * 4)?;
        Ok(SharedBitmap { mem, bits })
    }

    /// Number of bits.
    #[must_use]
    pub fn len(&self) -> u32 {
        self.bits
    }

    /// Whether the bitmap has no bits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.bits == 0
    }

    fn word(&self, bit: u32) -> Option<(AtomicWord<'a>, u32)> {
        if bit >= self.bits {
            return None;
        }
        let w = AtomicWord::at(&self.mem, (bit / 32) as usize * 4).ok()?;
        Some((w, 1u32 << (bit % 32)))
    }

    /// Atomically sets `bit`, returning its previous value (`None` if out of range).
    pub fn test_and_set(&self, bit: u32) -> Option<bool> {
        let (w, m) = self.word(bit)?;
        Some(w.fetch_or(m, Ordering::SeqCst) & m != 0)
    }

    /// Atomically clears `bit`, returning its previous value (`None` if out of range).
    pub fn test_and_clear(&self, bit: u32) -> Option<bool> {
        let (w, m) = self.word(bit)?;
        Some(w.fetch_and(!m, Ordering::SeqCst) & m != 0)
    }

    /// Reads `bit` (`None` if out of range).
    #[must_use]
    pub fn test(&self, bit: u32) -> Option<bool> {
        let (w, m) = self.word(bit)?;
        Some(w.load(Ordering::SeqCst) & m != 0)
    }

    /// The 32-bit word holding bits `32 * index ..`, read atomically (0 when out of range).
    #[must_use]
    pub fn load_word32(&self, index: u32) -> u32 {
        match index.checked_mul(32).and_then(|b| self.word(b)) {
            Some((w, _)) => w.load(Ordering::SeqCst),
            None => 0,
        }
    }
}

/// Bits in one `xen_ulong_t` of the compile target (64 on amd64, 32 on i386): the number of
/// ports one `evtchn_pending_sel` bit covers in the 2-level ABI.
pub const BITS_PER_XEN_ULONG: u32 = xen_ulong_t::BITS;

/// Ports of the 2-level ABI: one `xen_ulong_t` of selector bits, each covering one
/// `xen_ulong_t` of pending bits (4096 on amd64, 1024 on i386).
pub const EVTCHN_2L_NR_CHANNELS: u32 = BITS_PER_XEN_ULONG * BITS_PER_XEN_ULONG;

/// Size of one `vcpu_info` (64 bytes on both widths).
pub const VCPU_INFO_SIZE: usize = size_of::<vcpu_info>();

/// Offset of `wc_sec_hi`: a top-level field on amd64, inside `arch` on i386.
#[cfg(target_arch = "x86_64")]
const WC_SEC_HI: usize = offset_of!(shared_info, wc_sec_hi);
#[cfg(target_arch = "x86")]
const WC_SEC_HI: usize =
    offset_of!(shared_info, arch) + offset_of!(xen_sys::native::arch_shared_info, wc_sec_hi);

/// A view of the `shared_info` page.
#[derive(Clone, Copy, Debug)]
pub struct SharedInfo<'a> {
    mem: SharedMem<'a>,
}

impl<'a> SharedInfo<'a> {
    /// Views `mem` (at least `size_of::<shared_info>()` bytes, usually the whole page) as
    /// `shared_info`.
    ///
    /// # Errors
    /// `mem` too short or misaligned.
    pub fn new(mem: SharedMem<'a>) -> Result<Self, ShmemError> {
        let mem = mem.subrange(0, size_of::<shared_info>())?;
        // Every field we touch atomically must be 4-aligned: check one to reject odd bases.
        let _ = mem.u32_at(offset_of!(shared_info, evtchn_pending))?;
        Ok(SharedInfo { mem })
    }

    /// The raw view (for the simulator and tests).
    #[must_use]
    pub fn mem(&self) -> SharedMem<'a> {
        self.mem
    }

    /// The 2-level pending bitmap (`evtchn_pending`), [`EVTCHN_2L_NR_CHANNELS`] bits.
    ///
    /// # Panics
    /// Never: the range was checked by [`SharedInfo::new`].
    #[must_use]
    pub fn evtchn_pending(&self) -> SharedBitmap<'a> {
        self.bitmap(offset_of!(shared_info, evtchn_pending))
    }

    /// The 2-level mask bitmap (`evtchn_mask`), [`EVTCHN_2L_NR_CHANNELS`] bits.
    #[must_use]
    pub fn evtchn_mask(&self) -> SharedBitmap<'a> {
        self.bitmap(offset_of!(shared_info, evtchn_mask))
    }

    fn bitmap(&self, offset: usize) -> SharedBitmap<'a> {
        let len = EVTCHN_2L_NR_CHANNELS as usize / 8;
        // The field lies inside `shared_info` by construction, which `new` checked we hold.
        let sub = self.mem.subrange(offset, len).unwrap_or(self.mem);
        SharedBitmap::new(sub, EVTCHN_2L_NR_CHANNELS).unwrap_or(SharedBitmap {
            mem: self.mem,
            bits: 0,
        })
    }

    /// The `vcpu_info` slot of vCPU `vcpu` inside `shared_info` (`None` for `vcpu` ≥
    /// `XEN_LEGACY_MAX_VCPUS`, which must register their own area).
    #[must_use]
    pub fn legacy_vcpu_info(&self, vcpu: u32) -> Option<VcpuInfo<'a>> {
        if vcpu >= xen_sys::native::XEN_LEGACY_MAX_VCPUS {
            return None;
        }
        let off = offset_of!(shared_info, vcpu_info) + vcpu as usize * VCPU_INFO_SIZE;
        VcpuInfo::new(self.mem.subrange(off, VCPU_INFO_SIZE).ok()?).ok()
    }

    /// The wall clock at boot (`wc_sec` with `wc_sec_hi`, `wc_nsec`), read consistently under
    /// `wc_version` (odd while Xen updates it). Gives up after `tries` attempts and returns
    /// `None` rather than spinning forever.
    #[must_use]
    pub fn wallclock(&self, tries: u32) -> Option<(u64, u32)> {
        let v_off = offset_of!(shared_info, wc_version);
        for _ in 0..tries {
            let v1 = self.mem.load_acquire_u32(v_off).ok()?;
            if v1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let sec = self
                .mem
                .load_relaxed_u32(offset_of!(shared_info, wc_sec))
                .ok()?;
            let nsec = self
                .mem
                .load_relaxed_u32(offset_of!(shared_info, wc_nsec))
                .ok()?;
            let hi = self.mem.load_relaxed_u32(WC_SEC_HI).ok()?;
            core::sync::atomic::fence(Ordering::Acquire);
            if self.mem.load_relaxed_u32(v_off).ok()? == v1 {
                return Some(((u64::from(hi) << 32) | u64::from(sec), nsec));
            }
        }
        None
    }
}

/// A view of one vCPU's `vcpu_info` (64 bytes, in `shared_info` or registered elsewhere).
#[derive(Clone, Copy, Debug)]
pub struct VcpuInfo<'a> {
    mem: SharedMem<'a>,
}

/// Offsets inside `vcpu_info` (the first word holds the two flag bytes).
const UPCALL_WORD: usize = 0;
const UPCALL_PENDING_BIT: u32 = 1 << (8 * offset_of!(vcpu_info, evtchn_upcall_pending));
const UPCALL_MASK_BIT: u32 = 1 << (8 * offset_of!(vcpu_info, evtchn_upcall_mask));

impl<'a> VcpuInfo<'a> {
    /// Views `mem` (at least 64 bytes, 4-aligned) as a `vcpu_info`.
    ///
    /// # Errors
    /// `mem` too short or misaligned.
    pub fn new(mem: SharedMem<'a>) -> Result<Self, ShmemError> {
        let mem = mem.subrange(0, VCPU_INFO_SIZE)?;
        let _ = mem.u32_at(0)?;
        Ok(VcpuInfo { mem })
    }

    /// The raw view.
    #[must_use]
    pub fn mem(&self) -> SharedMem<'a> {
        self.mem
    }

    fn flags(&self) -> Option<AtomicWord<'a>> {
        AtomicWord::at(&self.mem, UPCALL_WORD).ok()
    }

    /// `evtchn_upcall_pending`: Xen has events for this vCPU.
    #[must_use]
    pub fn upcall_pending(&self) -> bool {
        self.flags()
            .is_some_and(|w| w.load(Ordering::SeqCst) & UPCALL_PENDING_BIT != 0)
    }

    /// Clears `evtchn_upcall_pending` (first thing an upcall does, *before* reading the
    /// selector, so an event raised during the scan raises a new upcall).
    pub fn clear_upcall_pending(&self) {
        if let Some(w) = self.flags() {
            w.fetch_and(!UPCALL_PENDING_BIT, Ordering::SeqCst);
        }
    }

    /// Sets `evtchn_upcall_pending` (what Xen does; used by the simulator and by unmask paths).
    pub fn set_upcall_pending(&self) -> bool {
        self.flags().is_some_and(|w| {
            w.fetch_or(UPCALL_PENDING_BIT, Ordering::SeqCst) & UPCALL_PENDING_BIT != 0
        })
    }

    /// `evtchn_upcall_mask`: upcalls disabled (PV-style; HVM/PVH guests use the interrupt flag).
    #[must_use]
    pub fn upcall_masked(&self) -> bool {
        self.flags()
            .is_some_and(|w| w.load(Ordering::SeqCst) & UPCALL_MASK_BIT != 0)
    }

    /// Sets or clears `evtchn_upcall_mask`.
    pub fn set_upcall_mask(&self, masked: bool) {
        if let Some(w) = self.flags() {
            if masked {
                w.fetch_or(UPCALL_MASK_BIT, Ordering::SeqCst);
            } else {
                w.fetch_and(!UPCALL_MASK_BIT, Ordering::SeqCst);
            }
        }
    }

    /// Atomically takes (reads and zeroes) `evtchn_pending_sel`.
    ///
    /// On amd64 the selector is 64 bits; it is swapped as two 32-bit halves. That is still
    /// exact: a bit Xen sets after its half was swapped stays set for the next upcall, and Xen
    /// raises `evtchn_upcall_pending` again for it.
    pub fn take_pending_sel(&self) -> u64 {
        let base = offset_of!(vcpu_info, evtchn_pending_sel);
        let mut sel = 0u64;
        for half in 0..size_of::<xen_ulong_t>() / 4 {
            if let Ok(w) = AtomicWord::at(&self.mem, base + half * 4) {
                sel |= u64::from(w.swap(0, Ordering::SeqCst)) << (32 * half);
            }
        }
        sel
    }

    /// Sets selector bit `bit` (what Xen does when a port in word `bit` becomes pending);
    /// returns its previous value. Out-of-range bits return `true` and change nothing.
    pub fn set_pending_sel_bit(&self, bit: u32) -> bool {
        if bit >= BITS_PER_XEN_ULONG {
            return true;
        }
        let off = offset_of!(vcpu_info, evtchn_pending_sel) + (bit / 32) as usize * 4;
        match AtomicWord::at(&self.mem, off) {
            Ok(w) => w.fetch_or(1 << (bit % 32), Ordering::SeqCst) & (1 << (bit % 32)) != 0,
            Err(_) => true,
        }
    }

    /// A consistent copy of the vCPU's `vcpu_time_info` (under its `version`, odd while Xen
    /// updates it); `None` after `tries` inconsistent reads.
    #[must_use]
    pub fn time(&self, tries: u32) -> Option<vcpu_time_info> {
        let base = offset_of!(vcpu_info, time);
        for _ in 0..tries {
            let v1 = self.mem.load_acquire_u32(base).ok()?;
            if v1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let mul_off = base + offset_of!(vcpu_time_info, tsc_to_system_mul);
            let shift_flags = self.mem.load_relaxed_u32(mul_off + 4).ok()?.to_le_bytes();
            let t = vcpu_time_info {
                version: v1,
                tsc_timestamp: self.read_u64(base + offset_of!(vcpu_time_info, tsc_timestamp))?,
                system_time: self.read_u64(base + offset_of!(vcpu_time_info, system_time))?,
                tsc_to_system_mul: self.mem.load_relaxed_u32(mul_off).ok()?,
                tsc_shift: i8::from_le_bytes([shift_flags[0]]),
                flags: shift_flags[1],
                ..Default::default()
            };
            core::sync::atomic::fence(Ordering::Acquire);
            if self.mem.load_relaxed_u32(base).ok()? == v1 {
                return Some(t);
            }
        }
        None
    }

    fn read_u64(&self, off: usize) -> Option<u64> {
        let lo = self.mem.load_relaxed_u32(off).ok()?;
        let hi = self.mem.load_relaxed_u32(off + 4).ok()?;
        Some(u64::from(lo) | (u64::from(hi) << 32))
    }
}

/// Where to map `shared_info`: `XENMEM_add_to_physmap` with `XENMAPSPACE_shared_info` at a
/// guest frame the caller reserved (a hole in its physical map, or a page it gave back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedInfoMapping {
    /// The guest frame number at which Xen should place `shared_info`.
    pub gpfn: u64,
}

impl SharedInfoMapping {
    /// Asks Xen to place `shared_info` at `self.gpfn`. The caller then maps that frame and builds
    /// a [`SharedInfo`] over it.
    ///
    /// # Errors
    /// Xen's error (e.g. `EINVAL` for a GFN outside the guest's physical map).
    pub fn map<H: Hypervisor + ?Sized>(&self, hv: &H) -> Result<(), XenError> {
        let mut xatp = xen_add_to_physmap {
            domid: DOMID_SELF,
            space: xen_sys::native::XENMAPSPACE_shared_info,
            idx: 0,
            gpfn: crate::ext::to_ulong(self.gpfn)?,
            ..Default::default()
        };
        hv.memory_op(MemoryOp::AddToPhysmap(&mut xatp)).map(|_| ())
    }
}

/// Registers a `vcpu_info` area for vCPU `vcpu` at machine/guest frame `mfn`, byte `offset`
/// (`VCPUOP_register_vcpu_info`). The area must be 64 bytes, must not cross a page, and stays
/// registered until the vCPU is reset; Xen copies the current contents over.
///
/// # Errors
/// `EINVAL` for a bad offset (checked here too, before asking Xen), Xen's error otherwise.
pub fn register_vcpu_info<H: Hypervisor + ?Sized>(
    hv: &H,
    vcpu: u32,
    mfn: u64,
    offset: u32,
) -> Result<(), XenError> {
    if offset as usize + VCPU_INFO_SIZE > 4096 || offset % 4 != 0 {
        return Err(XenError::EINVAL);
    }
    let mut info = xen_sys::native::vcpu_register_vcpu_info {
        mfn,
        offset,
        rsvd: 0,
    };
    hv.vcpu_op(vcpu, VcpuOp::RegisterVcpuInfo(&mut info))
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use xen_shmem::Page;

    #[test]
    fn layout_constants() {
        assert_eq!(VCPU_INFO_SIZE, 64);
        assert_eq!(UPCALL_PENDING_BIT, 1);
        assert_eq!(UPCALL_MASK_BIT, 0x100);
        assert_eq!(
            EVTCHN_2L_NR_CHANNELS,
            if cfg!(target_pointer_width = "64") {
                4096
            } else {
                1024
            }
        );
    }

    #[test]
    fn bitmaps_and_vcpu_info() {
        let page = [Page::new()];
        let si = SharedInfo::new(SharedMem::from_pages(&page)).unwrap();
        let p = si.evtchn_pending();
        assert_eq!(p.len(), EVTCHN_2L_NR_CHANNELS);
        assert_eq!(p.test_and_set(70), Some(false));
        assert_eq!(p.test_and_set(70), Some(true));
        assert_eq!(p.test(70), Some(true));
        assert_eq!(p.load_word32(2), 1 << 6);
        assert_eq!(p.test_and_clear(70), Some(true));
        assert_eq!(p.test_and_clear(70), Some(false));
        assert_eq!(p.test(EVTCHN_2L_NR_CHANNELS), None);
        assert_eq!(p.load_word32(u32::MAX), 0);
        // The mask bitmap is a different field.
        si.evtchn_mask().test_and_set(3);
        assert_eq!(si.evtchn_pending().test(3), Some(false));

        let v = si.legacy_vcpu_info(1).unwrap();
        assert!(si.legacy_vcpu_info(32).is_none());
        assert!(!v.upcall_pending());
        assert!(!v.set_upcall_pending());
        assert!(v.upcall_pending());
        v.set_upcall_mask(true);
        assert!(v.upcall_masked());
        v.clear_upcall_pending();
        assert!(!v.upcall_pending());
        assert!(v.upcall_masked());
        assert!(!v.set_pending_sel_bit(0));
        assert!(v.set_pending_sel_bit(0));
        assert!(!v.set_pending_sel_bit(BITS_PER_XEN_ULONG - 1));
        assert!(v.set_pending_sel_bit(BITS_PER_XEN_ULONG));
        assert_eq!(v.take_pending_sel(), 1 | (1 << (BITS_PER_XEN_ULONG - 1)));
        assert_eq!(v.take_pending_sel(), 0);
        // vcpu 1's slot does not overlap vcpu 0's.
        assert!(!si.legacy_vcpu_info(0).unwrap().upcall_pending());
    }

    #[test]
    fn short_memory_is_refused() {
        let page = [Page::new()];
        let m = SharedMem::from_pages(&page);
        assert!(SharedInfo::new(m.subrange(0, 100).unwrap()).is_err());
        assert!(VcpuInfo::new(m.subrange(0, 63).unwrap()).is_err());
        assert!(VcpuInfo::new(m.subrange(2, 64).unwrap()).is_err());
        assert!(AtomicWord::at(&m, 4094).is_err());
        assert!(AtomicWord::at(&m, 2).is_err());
    }

    #[test]
    fn time_and_wallclock_reads() {
        let page = [Page::new()];
        let m = SharedMem::from_pages(&page);
        let si = SharedInfo::new(m).unwrap();
        m.store_relaxed_u32(offset_of!(shared_info, wc_sec), 5)
            .unwrap();
        m.store_relaxed_u32(WC_SEC_HI, 1).unwrap();
        m.store_relaxed_u32(offset_of!(shared_info, wc_nsec), 7)
            .unwrap();
        assert_eq!(si.wallclock(3), Some(((1 << 32) | 5, 7)));
        m.store_relaxed_u32(offset_of!(shared_info, wc_version), 1)
            .unwrap();
        assert_eq!(si.wallclock(3), None, "odd version: update in progress");

        let v = si.legacy_vcpu_info(0).unwrap();
        let base = offset_of!(shared_info, vcpu_info) + offset_of!(vcpu_info, time);
        m.write(
            base + offset_of!(vcpu_time_info, system_time),
            &123_456_789_012u64,
        )
        .unwrap();
        m.write(base + offset_of!(vcpu_time_info, tsc_to_system_mul), &77u32)
            .unwrap();
        m.write(base + offset_of!(vcpu_time_info, tsc_shift), &(-2i8))
            .unwrap();
        m.write(base, &2u32).unwrap();
        let t = v.time(3).unwrap();
        assert_eq!(t.system_time, 123_456_789_012);
        assert_eq!(t.tsc_to_system_mul, 77);
        assert_eq!(t.tsc_shift, -2);
        m.write(base, &3u32).unwrap();
        assert!(v.time(2).is_none());
    }
}
