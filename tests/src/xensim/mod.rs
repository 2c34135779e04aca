//! `xensim`: the simulated Xen that lets the protocol cores run end to end on the host.
//!
//! Everything here is deterministic: no wall clock, and randomness only from an explicitly
//! seeded [`Rng`], so a failing test replays exactly.
//!
//! * [`hypervisor`]: the hypervisor core — [`SimHypervisor`] with several domains, each a
//!   [`DomainHandle`] implementing `xen_kmod::Hypervisor`: guest memory, grant tables with
//!   Xen's permission and pin semantics ([`grants`]), event channels delivered into
//!   `shared_info` ([`events`]), a virtual clock and fault injection ([`faults`]).
//! * [`xenstored`]: the xenstore daemon (tree, permissions, watches, transactions, quotas,
//!   fault injection) speaking the wire protocol over each domain's interface ring.

pub mod xenstored;

// The hypervisor core: domains, memory, grant tables, event channels, fault injection.
pub mod events;
pub mod faults;
pub mod fifo;
pub mod foreign;
pub mod grants;
pub mod hypervisor;
pub mod memory;
pub use hypervisor::{DomainConfig, DomainHandle, SimConfig, SimHypervisor};

/// A small seeded generator (xorshift64*) for simulation choices.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is remapped: xorshift has no zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// An index in `0..n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        let n64 = u64::try_from(n).unwrap_or(u64::MAX);
        usize::try_from(self.below(n64)).unwrap_or(0)
    }
}
