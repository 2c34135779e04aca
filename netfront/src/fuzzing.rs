//! Fuzz-target bodies (feature `fuzzing`).
