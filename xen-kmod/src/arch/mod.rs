//! The real platform: Xen detection, hypercall page set-up and the trap into Xen.
//!
//! Everything architecture-specific and every line of assembly lives here (`raw`); the rest of
//! the module is safe code that is tested on the host:
//! * [`cpuid`]: parsing the Xen CPUID leaves (scripted in tests);
//! * [`marshal`]: typed call → `(hypercall, args)` (recorded in tests);
//! * `raw`: CPUID, WRMSR, hypercall page call, `vmcall`/`vmmcall` (the x86_64 page path is run
//!   on the host against a stub page that records registers; the i386 page and direct sequences
//!   are assembled with `gcc -m32` and run the same way in a 32-bit process);
//! * [`XenPlatform`]: the [`crate::Hypervisor`] implementation gluing them together.

pub mod cpuid;
pub mod marshal;
mod platform;
mod raw;

pub use platform::{HypercallMode, PlatformError, XenPlatform};

/// Serialises the tests that use the recording stub page (it has one global record).
#[cfg(all(test, target_arch = "x86_64"))]
static TEST_PAGE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
extern crate std;
