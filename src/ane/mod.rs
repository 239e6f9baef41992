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
pub mod compile_queue;
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
        let mut d = sim::SimDevice::with_profile(profile.clone()).budget(budget);
        inject_from_env(&mut d)?;
        Box::new(d)
    } else {
        availability().map_err(|why| {
            anyhow::anyhow!(
                "backend ane is unavailable: {why} (use --backend ane-sim for the simulated device)"
            )
        })?;
        Box::new(private::PrivateDevice::new()?.with_budget(budget))
    })
}

/// The test knob of the simulated device: `ANETRAIN_SIM_REJECT=kernel:fwdAttn,op:concat`
/// makes it refuse every program whose label contains `fwdAttn` and every program using
/// `concat`, as a chip that rejects them would — how the CPU fallback of a training run is
/// exercised without hardware.
pub const SIM_REJECT_ENV: &str = "ANETRAIN_SIM_REJECT";

fn inject_from_env(d: &mut sim::SimDevice) -> anyhow::Result<()> {
    let Ok(spec) = std::env::var(SIM_REJECT_ENV) else {
        return Ok(());
    };
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item.split_once(':') {
            Some(("kernel", k)) => d.reject_kernel(k, &format!("{SIM_REJECT_ENV}={spec}")),
            Some(("op", o)) => d.reject_op(o),
            _ => anyhow::bail!("{SIM_REJECT_ENV}: {item:?} is neither kernel:NAME nor op:NAME"),
        }
    }
    Ok(())
}

/// Whether the real Neural Engine can be used here, and if not, why.
pub fn availability() -> Result<(), String> {
    private::availability()
}
