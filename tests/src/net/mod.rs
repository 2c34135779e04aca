//! Network test support: the netfront/netback pair over `xensim` ([`pair`]; its handshake
//! through `xen_xenbus::Bus`: [`bus`]), the cores'
//! platforms and event delivery ([`sim`]), TAP devices with virtio headers ([`tap`]), and the
//! one small unsafe module (ioctls, `setns`: [`sys`]).

pub mod bus;
pub mod pair;
pub mod sim;
pub mod sys;
pub mod tap;
