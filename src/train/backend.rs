//! Building the compute backend a run asked for, and the process's worker-thread count.
//! Above both `kernels/` (the `cpu` backend) and `ane/` (`ane`, `ane-sim`), so neither of
//! them knows about the other.

use crate::ane::{sim::SimDevice, AneKernels, Device, Pipeline};
use crate::kernels::{BackendKind, Kernels};
use crate::model::Config;
use anyhow::Result;

/// Sets the worker-thread count for rayon and the GEMMs (default: every core the process
/// may use). Returns it.
pub fn set_threads(threads: Option<usize>) -> usize {
    let n = threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global();
    crate::kernels::gemm::set_threads(n);
    n
}

/// Compiles per process the Neural Engine allows (about 119; docs/ANE.md), used when the
/// run names no budget.
const DEFAULT_COMPILE_BUDGET: u32 = 119;

/// The backend a run asked for: `--backend` and the options that shape it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendChoice {
    pub kind: BackendKind,
    /// Neural Engine pipeline (ane, ane-sim).
    pub pipeline: Pipeline,
    /// Neural Engine compiles per process (default: the hardware's).
    pub compile_budget: Option<u32>,
}

impl BackendChoice {
    /// The fp32 CPU backend.
    pub fn cpu() -> BackendChoice {
        BackendChoice {
            kind: BackendKind::Cpu,
            pipeline: Pipeline::Dynamic,
            compile_budget: None,
        }
    }
}

/// Builds the backend `b` for config `c` and `batch × seq` token columns.
pub fn make_kernels(
    b: &BackendChoice,
    c: &Config,
    batch: usize,
    seq: usize,
) -> Result<Box<dyn Kernels>> {
    let budget = b.compile_budget.unwrap_or(DEFAULT_COMPILE_BUDGET) as u64;
    let device: Box<dyn Device> = match b.kind {
        BackendKind::Cpu => return Ok(Box::new(crate::kernels::cpu::CpuKernels::new())),
        BackendKind::AneSim => Box::new(SimDevice::with_budget(budget)),
        BackendKind::Ane => {
            crate::ane::availability()
                .map_err(|why| anyhow::anyhow!("backend ane is unavailable: {why} (use --backend ane-sim for the simulated device)"))?;
            Box::new(crate::ane::private::PrivateDevice::new()?.with_budget(budget))
        }
    };
    Ok(Box::new(AneKernels::new(
        device, c, batch, seq, b.pipeline,
    )?))
}
