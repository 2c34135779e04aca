//! What to run: scenarios, the guest runs that produce their verdicts, and the architectures.

use std::fmt;

/// A guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// 64-bit PVH guest (long mode).
    X86_64,
    /// 32-bit PVH guest (protected mode, Xen's x86_32 ABI).
    I686,
}

impl Arch {
    /// Both, in run order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::I686];

    /// The name used in files, markers and the guest's target spec.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::I686 => "i686",
        }
    }

    /// Parses a name (`amd64`/`i386` accepted too).
    ///
    /// # Errors
    /// An unknown name.
    pub fn parse(s: &str) -> Result<Arch, String> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "i686" | "i386" | "x86" => Ok(Arch::I686),
            _ => Err(format!("unknown arch `{s}` (x86_64 or i686)")),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One guest lifetime in dom0 (several scenarios share it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RunKind {
    /// Every guest-side check, then `SCHEDOP_shutdown(poweroff)`.
    Basic,
    /// Set up, then console + xenstore I/O until `xl destroy`.
    Busy,
    /// With a disk: blkfront against dom0's xen-blkback.
    Blk,
    /// With a vif: netfront against dom0's xen-netback.
    Net,
    /// The driver domain (`run=dd`): our backends serving other domains' frontends.
    Dd,
}

impl RunKind {
    /// The guest's `run=` value and the run id prefix.
    pub fn name(self) -> &'static str {
        match self {
            RunKind::Basic => "basic",
            RunKind::Busy => "busy",
            RunKind::Blk => "blk",
            RunKind::Net => "net",
            RunKind::Dd => "dd",
        }
    }

    /// How long one run of this kind may take, from its `BEGIN` marker to its `END`.
    pub fn timeout(self) -> std::time::Duration {
        match self {
            // The driver domain serves Linux domUs (each boots in 1–3 minutes under TCG on a
            // loaded 2-core machine) and other frontends one after the other.
            RunKind::Dd => std::time::Duration::from_secs(1200),
            _ => std::time::Duration::from_secs(180),
        }
    }
}

/// Where a verdict comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `RESULT <name>` line the guest printed on the debug port.
    Guest(&'static str),
    /// A `CHECK <name> <arch>` line dom0's script printed.
    Dom0(&'static str),
}

/// A scenario: one pass/fail per architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scenario {
    /// Xen found by CPUID, hypercall page, `XENVER_version`, `shared_info`, time.
    Boot,
    /// PV console ring output reaches xenconsoled's log.
    Console,
    /// xenstore read/write round trip, verified by dom0's `xenstore-read`.
    Xenstore,
    /// Grant table frames mapped; a self-granted page copied through the grant by Xen.
    Gnttab,
    /// Event-channel upcall vector with an IDT entry delivers an IPI event.
    Upcall,
    /// `SCHEDOP_shutdown(poweroff)` leaves no domain in `xl list`.
    Shutdown,
    /// `xl destroy` of a guest busy with I/O leaves no zombie.
    Destroy,
    /// xen-blkfront against Linux's xen-blkback: write, read back, dom0 checks the bytes.
    Blk,
    /// `xl block-detach` + `block-attach` while the guest runs: a fresh connection, old data
    /// still there, new data written.
    BlkReattach,
    /// xen-netfront against Linux's xen-netback: ARP, ping both ways, UDP echo.
    Net,
    /// `xl network-detach` + `network-attach` while the guest runs: traffic again.
    NetReattach,
    /// Our driver domain's blkback serving a Linux PVH domU's xen-blkfront (RAM disk).
    DdBlk,
    /// Our driver domain's blkback serving our i686 guest's blkfront (`x86_32-abi`).
    DdBlkAbi32,
    /// Our driver domain's netback serving a Linux PVH domU's xen-netfront, bridged to dom0.
    DdNet,
    /// A hostile Linux frontend attacks the driver domain's blkback and netback while good
    /// ones use them.
    DdHostile,
    /// Benchmark (`xen-harness bench`, bench.rs): one Linux domU's disk and network I/O
    /// through dom0's backends and through the driver domain's, same boot. Not in [`ALL`]
    /// (`cargo kmod test` does not run it).
    ///
    /// [`ALL`]: Scenario::ALL
    Bench,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 15] = [
        Scenario::Boot,
        Scenario::Console,
        Scenario::Xenstore,
        Scenario::Gnttab,
        Scenario::Upcall,
        Scenario::Shutdown,
        Scenario::Destroy,
        Scenario::Blk,
        Scenario::BlkReattach,
        Scenario::Net,
        Scenario::NetReattach,
        Scenario::DdBlk,
        Scenario::DdBlkAbi32,
        Scenario::DdNet,
        Scenario::DdHostile,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Boot => "boot",
            Scenario::Console => "console",
            Scenario::Xenstore => "xenstore",
            Scenario::Gnttab => "gnttab",
            Scenario::Upcall => "upcall",
            Scenario::Shutdown => "shutdown",
            Scenario::Destroy => "destroy",
            Scenario::Blk => "blk",
            Scenario::BlkReattach => "blk-reattach",
            Scenario::Net => "net",
            Scenario::NetReattach => "net-reattach",
            Scenario::DdBlk => "dd-blk",
            Scenario::DdBlkAbi32 => "dd-blk-abi32",
            Scenario::DdHostile => "dd-hostile",
            Scenario::DdNet => "dd-net",
            Scenario::Bench => "bench",
        }
    }

    /// One line of description.
    pub fn about(self) -> &'static str {
        match self {
            Scenario::Boot => "PVH entry, Xen CPUID leaves, hypercall page, XENVER_version, shared_info, system time",
            Scenario::Console => "PV console ring (xen-ring) output reaches xenconsoled's log in dom0",
            Scenario::Xenstore => "xenstore (xen-xenbus) read of name/domid, write + read back, dom0 xenstore-read/-write round trip",
            Scenario::Gnttab => "xen-gnttab GrantTable on frames placed by XENMEM_add_to_physmap; GNTTABOP_copy through a self-granted page",
            Scenario::Upcall => "HVMOP_set_evtchn_upcall_vector + IDT + LAPIC deliver an IPI event channel, twice",
            Scenario::Shutdown => "SCHEDOP_shutdown(poweroff): the domain disappears, xl list holds only Domain-0",
            Scenario::Destroy => "xl destroy of a guest in the middle of disk I/O (xen-blkback): no zombie domain, the vbd released",
            Scenario::Blk => "xen-blkfront vs Linux xen-blkback on a RAM disk: 64 KiB written, read back, verified by dom0",
            Scenario::BlkReattach => "xl block-detach + block-attach while the guest runs: reconnect, old data read back, new data written, dom0 verifies",
            Scenario::Net => "xen-netfront vs Linux xen-netback on a bridge: ARP, ICMP echo both ways, UDP echo via dom0",
            Scenario::NetReattach => "xl network-detach + network-attach while the guest runs: reconnect, ARP/ping/UDP again",
            Scenario::DdBlk => "driver domain: our blkback (RAM disk) serves a Linux PVH domU's xen-blkfront: O_DIRECT + cached I/O, vfat, sha256",
            Scenario::DdBlkAbi32 => "driver domain: our blkback serves our i686 guest's blkfront (x86_32-abi ring layout)",
            Scenario::DdHostile => "driver domain: tests/hostile-frontend in a Linux domU attacks our blkback (13 phases) and netback (16) while our blkfront, then netfront, use the same driver domain",
            Scenario::DdNet => "driver domain: our netback serves a Linux domU's xen-netfront, bridged to dom0: ping, 3 MiB TCP each way, sha256",
            Scenario::Bench => "benchmark: a Linux domU's disk and TCP I/O via dom0's backends vs the driver domain's, same boot",
        }
    }

    /// Parses a name.
    ///
    /// # Errors
    /// An unknown name.
    pub fn parse(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .chain([Scenario::Bench])
            .find(|sc| sc.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
                format!("unknown scenario `{s}` (one of {})", names.join(", "))
            })
    }

    /// The guest architectures a scenario needs besides the run's own (a frontend of another
    /// width).
    pub fn extra_guests(self) -> &'static [Arch] {
        match self {
            Scenario::DdBlkAbi32 => &[Arch::I686],
            _ => &[],
        }
    }

    /// The guest run that decides it.
    pub fn run_kind(self) -> RunKind {
        match self {
            Scenario::Destroy => RunKind::Busy,
            Scenario::Blk | Scenario::BlkReattach => RunKind::Blk,
            Scenario::Net | Scenario::NetReattach => RunKind::Net,
            Scenario::DdBlk | Scenario::DdBlkAbi32 | Scenario::DdNet => RunKind::Dd,
            Scenario::DdHostile | Scenario::Bench => RunKind::Dd,
            _ => RunKind::Basic,
        }
    }

    /// The lines that must all say PASS.
    pub fn sources(self) -> &'static [Source] {
        match self {
            Scenario::Boot => &[Source::Guest("boot")],
            Scenario::Console => &[Source::Guest("console"), Source::Dom0("console")],
            Scenario::Xenstore => &[Source::Guest("xenstore"), Source::Dom0("xenstore")],
            Scenario::Gnttab => &[Source::Guest("gnttab")],
            Scenario::Upcall => &[Source::Guest("upcall")],
            Scenario::Shutdown => &[Source::Dom0("shutdown")],
            Scenario::Destroy => &[Source::Dom0("destroy")],
            Scenario::Blk => &[Source::Guest("blk"), Source::Dom0("blk")],
            Scenario::BlkReattach => &[Source::Guest("blk-reattach"), Source::Dom0("blk-reattach")],
            Scenario::Net => &[Source::Guest("net"), Source::Dom0("net")],
            Scenario::NetReattach => &[Source::Guest("net-reattach"), Source::Dom0("net-reattach")],
            Scenario::DdBlk => &[Source::Guest("dd-blk"), Source::Dom0("dd-blk")],
            Scenario::DdBlkAbi32 => &[Source::Guest("dd-blk-abi32"), Source::Dom0("dd-blk-abi32")],
            Scenario::DdHostile => &[
                Source::Guest("dd-hostile"),
                Source::Guest("dd-hostile-net"),
                Source::Dom0("dd-hostile"),
            ],
            Scenario::DdNet => &[Source::Guest("dd-net"), Source::Dom0("dd-net")],
            Scenario::Bench => &[Source::Dom0("bench")],
        }
    }
}

/// One planned guest run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// What the guest does.
    pub kind: RunKind,
    /// Its architecture.
    pub arch: Arch,
    /// A token the guest prints/writes and dom0 looks for.
    pub nonce: String,
}

impl Run {
    /// `basic-x86_64` ...
    pub fn id(&self) -> String {
        format!("{}-{}", self.kind.name(), self.arch.name())
    }

    /// The xl domain name.
    pub fn domain_name(&self) -> String {
        format!("pvh-{}", self.id())
    }
}

/// The runs needed for `scenarios` on `arches`, in boot order (per arch: basic, then busy).
pub fn runs(scenarios: &[Scenario], arches: &[Arch], seed: u64) -> Vec<Run> {
    let mut out = Vec::new();
    for (i, &arch) in arches.iter().enumerate() {
        let kinds = [
            RunKind::Basic,
            RunKind::Busy,
            RunKind::Blk,
            RunKind::Net,
            RunKind::Dd,
        ];
        for (j, kind) in kinds.into_iter().enumerate() {
            if scenarios.iter().any(|s| s.run_kind() == kind) {
                let n = seed.wrapping_add((i * kinds.len() + j) as u64);
                out.push(Run {
                    kind,
                    arch,
                    nonce: format!("{n:016x}"),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_only_needed_runs() {
        let r = runs(&[Scenario::Xenstore], &[Arch::I686], 1);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].id(), "basic-i686");
        assert_eq!(r[0].domain_name(), "pvh-basic-i686");
        let r = runs(&Scenario::ALL, &Arch::ALL, 7);
        let ids: Vec<String> = r.iter().map(Run::id).collect();
        assert_eq!(
            ids,
            [
                "basic-x86_64",
                "busy-x86_64",
                "blk-x86_64",
                "net-x86_64",
                "dd-x86_64",
                "basic-i686",
                "busy-i686",
                "blk-i686",
                "net-i686",
                "dd-i686"
            ]
        );
        assert!(r.windows(2).all(|w| w[0].nonce != w[1].nonce));
    }

    #[test]
    fn names_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Ok(s));
        }
        assert!(Scenario::parse("nope").is_err());
        assert_eq!(Arch::parse("amd64"), Ok(Arch::X86_64));
        assert_eq!(Arch::parse("i386"), Ok(Arch::I686));
    }
}
