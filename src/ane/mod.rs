//! The Apple Neural Engine path: MIL program generation, weight blobs, a simulated device,
//! the private-API runtime, and the `ane` / `ane-sim` backends.
//!
//! ```text
//!   kernels::Kernels ──► backend::AneKernels ──► mil::kernels (programs + surface layouts)
//!                              │                      │
//!                              │                      └─► blob (weight files)
//!                              ▼
//!                        device::Device ──► sim::SimDevice     (parse text → plan → fp16 run)
//!                                      └──► private::PrivateDevice (dlopen + objc_msgSend)
//! ```
//!
//! Everything above [`device::Device`] is shared by `ane` and `ane-sim`: the simulator parses
//! the very text the hardware would compile, so generating, packing and budgeting are tested
//! on any machine. See docs/ANE.md for both pipelines' kernel tables, the simulator's op set,
//! the cost model and the recommended loss-scaling scheme.

pub mod backend;
pub mod blob;
pub mod bringup;
pub mod check;
pub mod chip;
pub mod device;
pub mod fit;
pub mod mil;
pub mod private;
pub mod sim;

pub use backend::AneKernels;
pub use chip::Profile;
pub use device::Device;
pub use mil::kernels::Pipeline;

/// Opens the Neural Engine device for a backend: the simulator (`sim`) or the real one
/// through the private runtime, planning `budget` compiles per process (the profile's when
/// `None`).
pub fn open_device(
    sim: bool,
    profile: &Profile,
    budget: Option<u64>,
) -> anyhow::Result<Box<dyn Device>> {
    let budget = budget.unwrap_or(profile.compile_budget);
    Ok(if sim {
        Box::new(sim::SimDevice::with_profile(profile.clone()).budget(budget))
    } else {
        availability().map_err(|why| {
            anyhow::anyhow!(
                "backend ane is unavailable: {why} (use --backend ane-sim for the simulated device)"
            )
        })?;
        Box::new(private::PrivateDevice::new()?.with_budget(budget))
    })
}

/// Whether the real Neural Engine can be used here, and if not, why.
pub fn availability() -> Result<(), String> {
    private::availability()
}
