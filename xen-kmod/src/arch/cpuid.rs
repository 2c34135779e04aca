//! Detecting Xen from the CPUID hypervisor leaves (Xen's public `arch-x86/cpuid.h`).
//!
//! Parsing is separate from executing `cpuid`: [`detect`] takes the CPUID instruction as a
//! function, so every branch is tested on the host with scripted leaves, and a hypervisor that
//! reports nonsense (a truncated leaf range, zero hypercall pages) yields `None` or an explicit
//! field, never a panic.

/// One CPUID result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cpuid {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// First and last (exclusive) hypervisor leaf base scanned, and the step. Xen places its
/// leaves at `0x40000000` or, when it also offers Viridian (Hyper-V) leaves there, at
/// `0x40000100`; scanning the whole documented window in 0x100 steps finds it either way.
pub const SCAN_FIRST: u32 = 0x4000_0000;
/// End of the scan window (exclusive).
pub const SCAN_END: u32 = 0x4001_0000;
/// Distance between candidate bases.
pub const SCAN_STEP: u32 = 0x100;

/// `"XenVMMXenVMM"` as EBX, ECX, EDX of the base leaf.
pub const SIGNATURE: (u32, u32, u32) = (0x566e_6558, 0x6558_4d4d, 0x4d4d_566e);

/// `XEN_HVM_CPUID_*` bits of leaf base+4 EAX.
pub mod hvm_features {
    /// Virtualized APIC registers.
    pub const APIC_ACCESS_VIRT: u32 = 1 << 0;
    /// Virtualized x2APIC accesses.
    pub const X2APIC_VIRT: u32 = 1 << 1;
    /// Memory mapped from other domains has valid IOMMU entries.
    pub const IOMMU_MAPPINGS: u32 = 1 << 2;
    /// EBX holds the vCPU id.
    pub const VCPU_ID_PRESENT: u32 = 1 << 3;
    /// ECX holds the domain id.
    pub const DOMID_PRESENT: u32 = 1 << 4;
    /// Extended destination IDs for MSI.
    pub const EXT_DEST_ID: u32 = 1 << 5;
    /// `HVMOP_set_evtchn_upcall_vector` (per-vCPU upcall vectors) is available.
    pub const UPCALL_VECTOR: u32 = 1 << 6;
}

/// The CPU vendor, which decides the direct hypercall instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// Intel, and the VIA/Zhaoxin parts that implement VMX: `vmcall`.
    Intel,
    /// AMD and Hygon (SVM): `vmmcall`.
    Amd,
    /// Anything else: only the hypercall page is safe to use.
    Other,
}

impl Vendor {
    /// Vendor from leaf 0 (EBX, EDX, ECX spell the vendor string).
    #[must_use]
    pub fn from_leaf0(leaf0: Cpuid) -> Vendor {
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        s[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        s[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
        match &s {
            b"GenuineIntel" | b"CentaurHauls" | b"  Shanghai  " => Vendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
}

/// What the Xen leaves say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XenCpuid {
    /// The base leaf (`0x40000000` + n·0x100).
    pub base: u32,
    /// The highest Xen leaf (EAX of the base leaf).
    pub max_leaf: u32,
    /// Xen major version (leaf base+1 EAX bits 31:16).
    pub major: u16,
    /// Xen minor version (leaf base+1 EAX bits 15:0).
    pub minor: u16,
    /// Number of hypercall transfer pages (leaf base+2 EAX).
    pub hypercall_pages: u32,
    /// MSR to write a hypercall page's physical address to (leaf base+2 EBX).
    pub hypercall_msr: u32,
    /// `XEN_HVM_CPUID_*` bits (leaf base+4 EAX), 0 when the leaf is absent.
    pub hvm_features: u32,
    /// Our vCPU id, when Xen reports it.
    pub vcpu_id: Option<u32>,
    /// Our domain id, when Xen reports it.
    pub domid: Option<u16>,
}

impl XenCpuid {
    /// Whether per-vCPU upcall vectors are available.
    #[must_use]
    pub fn has_upcall_vector(&self) -> bool {
        self.hvm_features & hvm_features::UPCALL_VECTOR != 0
    }
}

/// Finds Xen's leaves with `cpuid(leaf, subleaf)`; `None` when not running on Xen, or when the
/// leaves are too few to hold the hypercall MSR (base+2).
pub fn detect(mut cpuid: impl FnMut(u32, u32) -> Cpuid) -> Option<XenCpuid> {
    let mut base = SCAN_FIRST;
    while base < SCAN_END {
        let r = cpuid(base, 0);
        if (r.ebx, r.ecx, r.edx) == SIGNATURE {
            // The signature is not enough: a leaf range that stops before base+2 cannot tell
            // us how to make hypercalls.
            if r.eax < base + 2 {
                return None;
            }
            let ver = cpuid(base + 1, 0).eax;
            let hc = cpuid(base + 2, 0);
            let (hvm, vcpu_id, domid) = if r.eax >= base + 4 {
                let h = cpuid(base + 4, 0);
                let vcpu = (h.eax & hvm_features::VCPU_ID_PRESENT != 0).then_some(h.ebx);
                let dom = (h.eax & hvm_features::DOMID_PRESENT != 0)
                    .then(|| u16::try_from(h.ecx).ok())
                    .flatten();
                (h.eax, vcpu, dom)
            } else {
                (0, None, None)
            };
            // CAST: both halves fit 16 bits.
            let (major, minor) = ((ver >> 16) as u16, (ver & 0xffff) as u16);
            return Some(XenCpuid {
                base,
                max_leaf: r.eax,
                major,
                minor,
                hypercall_pages: hc.eax,
                hypercall_msr: hc.ebx,
                hvm_features: hvm,
                vcpu_id,
                domid,
            });
        }
        base += SCAN_STEP;
    }
    None
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::BTreeMap;

    fn xen_at(base: u32, max_off: u32, hvm: u32) -> BTreeMap<u32, Cpuid> {
        let mut m = BTreeMap::new();
        m.insert(
            base,
            Cpuid {
                eax: base + max_off,
                ebx: SIGNATURE.0,
                ecx: SIGNATURE.1,
                edx: SIGNATURE.2,
            },
        );
        m.insert(
            base + 1,
            Cpuid {
                eax: (4 << 16) | 17,
                ..Default::default()
            },
        );
        m.insert(
            base + 2,
            Cpuid {
                eax: 1,
                ebx: 0x4000_0000,
                ..Default::default()
            },
        );
        m.insert(
            base + 4,
            Cpuid {
                eax: hvm,
                ebx: 3,
                ecx: 7,
                edx: 0,
            },
        );
        m
    }

    fn run(m: &BTreeMap<u32, Cpuid>) -> Option<XenCpuid> {
        detect(|leaf, _| m.get(&leaf).copied().unwrap_or_default())
    }

    #[test]
    fn signature_constants_spell_xenvmm() {
        let mut s = [0u8; 12];
        s[0..4].copy_from_slice(&SIGNATURE.0.to_le_bytes());
        s[4..8].copy_from_slice(&SIGNATURE.1.to_le_bytes());
        s[8..12].copy_from_slice(&SIGNATURE.2.to_le_bytes());
        assert_eq!(&s, b"XenVMMXenVMM");
    }

    #[test]
    fn finds_xen_at_any_base() {
        for base in [0x4000_0000, 0x4000_0100, 0x4000_ff00] {
            let x = run(&xen_at(base, 5, hvm_features::UPCALL_VECTOR | 0x18)).unwrap();
            assert_eq!(x.base, base);
            assert_eq!((x.major, x.minor), (4, 17));
            assert_eq!(x.hypercall_pages, 1);
            assert_eq!(x.hypercall_msr, 0x4000_0000);
            assert!(x.has_upcall_vector());
            assert_eq!(x.vcpu_id, Some(3));
            assert_eq!(x.domid, Some(7));
        }
    }

    #[test]
    fn optional_fields_and_bad_leaves() {
        // No base+4 leaf: no HVM features.
        let x = run(&xen_at(0x4000_0000, 2, 0xff)).unwrap();
        assert_eq!(x.hvm_features, 0);
        assert_eq!(x.vcpu_id, None);
        // base+4 present but ids flagged absent.
        let x = run(&xen_at(0x4000_0000, 4, 0)).unwrap();
        assert_eq!((x.vcpu_id, x.domid), (None, None));
        // Too few leaves for the hypercall MSR.
        assert_eq!(run(&xen_at(0x4000_0000, 1, 0)), None);
        // No signature anywhere (bare metal, KVM...).
        assert_eq!(run(&BTreeMap::new()), None);
        // Outside the scan window.
        assert_eq!(run(&xen_at(0x4001_0000, 5, 0)), None);
        // A domid that does not fit domid_t is dropped, not truncated.
        let mut m = xen_at(0x4000_0000, 4, hvm_features::DOMID_PRESENT);
        m.insert(
            0x4000_0004,
            Cpuid {
                eax: hvm_features::DOMID_PRESENT,
                ecx: 0x1_0000,
                ..Default::default()
            },
        );
        assert_eq!(run(&m).unwrap().domid, None);
    }

    #[test]
    fn vendors() {
        let leaf = |s: &[u8; 12]| Cpuid {
            eax: 0,
            ebx: u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
            edx: u32::from_le_bytes([s[4], s[5], s[6], s[7]]),
            ecx: u32::from_le_bytes([s[8], s[9], s[10], s[11]]),
        };
        assert_eq!(Vendor::from_leaf0(leaf(b"GenuineIntel")), Vendor::Intel);
        assert_eq!(Vendor::from_leaf0(leaf(b"AuthenticAMD")), Vendor::Amd);
        assert_eq!(Vendor::from_leaf0(leaf(b"HygonGenuine")), Vendor::Amd);
        assert_eq!(Vendor::from_leaf0(leaf(b"CentaurHauls")), Vendor::Intel);
        assert_eq!(Vendor::from_leaf0(leaf(b"SomethingOdd")), Vendor::Other);
    }
}
