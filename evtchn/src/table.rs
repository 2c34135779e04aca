//! The port table: port number → binding, O(1), bounded.
//!
//! A plain vector indexed by port. It grows (fallibly) only when a bind returns a port beyond its
//! length, never in the upcall path, and never beyond the configured maximum, so a hypervisor
//! handing out huge port numbers cannot make us allocate without bound.

use alloc::vec::Vec;

use crate::channels::PortKind;
use crate::{Error, Port, PortStats, Token};

/// Why a port is masked (a port is unmasked at Xen only when no reason remains).
pub(crate) const MASK_USER: u8 = 1 << 0;
/// Masked by the storm throttle.
pub(crate) const MASK_THROTTLE: u8 = 1 << 1;

/// One bound port.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot {
    pub kind: PortKind,
    pub vcpu: u32,
    pub token: Token,
    pub auto_mask: bool,
    pub throttle: bool,
    /// `MASK_*` reasons currently applied.
    pub mask: u8,
    /// Start of the current throttle window and events counted in it.
    pub window_start: u64,
    pub window_count: u32,
    /// When throttled: the time at which the throttle is lifted.
    pub deferred_until: u64,
    pub stats: PortStats,
}

/// The table.
#[derive(Debug)]
pub(crate) struct PortTable {
    slots: Vec<Option<Slot>>,
    max: u32,
    bound: usize,
}

impl PortTable {
    pub fn new(max: u32) -> Self {
        PortTable {
            slots: Vec::new(),
            max,
            bound: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.bound
    }

    pub fn get(&self, port: Port) -> Option<&Slot> {
        self.slots.get(port as usize).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, port: Port) -> Option<&mut Slot> {
        self.slots.get_mut(port as usize).and_then(Option::as_mut)
    }

    pub fn contains(&self, port: Port) -> bool {
        self.get(port).is_some()
    }

    /// Makes room for `port` (fallible allocation) without inserting.
    pub fn reserve_for(&mut self, port: Port) -> Result<(), Error> {
        if port >= self.max {
            return Err(Error::PortOutOfRange(port));
        }
        let need = port as usize + 1;
        if need > self.slots.len() {
            // Grow geometrically (bounded by `max`) so a sequence of binds is amortised O(1).
            let target = need
                .max(self.slots.len() * 2)
                .min(self.max as usize)
                .max(need);
            self.slots
                .try_reserve(target - self.slots.len())
                .map_err(|_| Error::NoMemory)?;
            self.slots.resize(target, None);
        }
        Ok(())
    }

    /// Inserts at a free, reserved index.
    pub fn insert(&mut self, port: Port, slot: Slot) -> Result<(), Error> {
        self.reserve_for(port)?;
        let entry = self
            .slots
            .get_mut(port as usize)
            .ok_or(Error::PortOutOfRange(port))?;
        if entry.is_some() {
            return Err(Error::PortInUse(port));
        }
        *entry = Some(slot);
        self.bound += 1;
        Ok(())
    }

    pub fn remove(&mut self, port: Port) -> Option<Slot> {
        let s = self.slots.get_mut(port as usize)?.take();
        if s.is_some() {
            self.bound -= 1;
        }
        s
    }

    /// Bound ports, in ascending order.
    pub fn ports(&self) -> impl Iterator<Item = Port> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            // CAST: indices are < `max`, a u32.
            .filter_map(|(i, _)| Port::try_from(i).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        Slot {
            kind: PortKind::Ipi,
            vcpu: 0,
            token: 7,
            auto_mask: false,
            throttle: false,
            mask: 0,
            window_start: 0,
            window_count: 0,
            deferred_until: 0,
            stats: PortStats::default(),
        }
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = PortTable::new(100);
        assert!(t.get(5).is_none());
        t.insert(5, slot()).unwrap();
        assert_eq!(t.get(5).unwrap().token, 7);
        assert_eq!(t.insert(5, slot()), Err(Error::PortInUse(5)));
        assert_eq!(t.insert(100, slot()), Err(Error::PortOutOfRange(100)));
        assert_eq!(
            t.insert(u32::MAX, slot()),
            Err(Error::PortOutOfRange(u32::MAX))
        );
        t.insert(99, slot()).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.ports().collect::<alloc::vec::Vec<_>>(), [5, 99]);
        assert!(t.remove(5).is_some());
        assert!(t.remove(5).is_none());
        assert!(t.remove(1000).is_none());
        assert_eq!(t.len(), 1);
        assert!(t.get(u32::MAX).is_none());
    }
}
