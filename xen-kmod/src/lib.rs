//! The base Xen module (`xen.ko`): platform detection, hypercalls, shared_info, xenstore, xenbus, console, /dev/xen/privcmd and /dev/xen/xenstore.
//!
//! Part of the workspace layout described in `docs/ARCHITECTURE.md`; this crate's protocol
//! logic arrives with its own issue. It is already built for both kernel targets so that the
//! build and verification pipeline covers it from the start.
#![no_std]
