//! Typed constants.
