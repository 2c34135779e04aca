//! Pod impls.
