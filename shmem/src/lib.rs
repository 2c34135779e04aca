//! Peer-writable memory accessors.
#![no_std]
