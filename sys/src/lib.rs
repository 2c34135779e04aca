//! Xen public ABI.
#![no_std]
