//! Small shared helpers: the project's random number generator and atomic file writes.

pub mod fs;
pub mod mem;
pub mod peak;
pub mod rng;
