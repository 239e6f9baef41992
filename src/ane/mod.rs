//! The Apple Neural Engine path: MIL program generation, weight blobs, a simulated device,
//! the private-API runtime, and the `ane` / `ane-sim` backends.

/// Whether the real Neural Engine can be used here, and if not, why.
pub fn availability() -> Result<(), String> {
    Err("not implemented in this build".into())
}
