//! Small shared helpers: the project's random number generator and atomic file writes.

pub mod fs;
pub mod peak;
pub mod rng;
