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

/// Builds the backend `kind` for config `c` and `batch × seq` token columns. `pipeline` and
/// `budget` (compiles per process) matter to the Neural Engine backends only.
pub fn make_kernels(
    kind: BackendKind,
    c: &Config,
    batch: usize,
    seq: usize,
    pipeline: Pipeline,
    budget: u32,
) -> Result<Box<dyn Kernels>> {
    let device: Box<dyn Device> = match kind {
        BackendKind::Cpu => return Ok(Box::new(crate::kernels::cpu::CpuKernels::new())),
        BackendKind::AneSim => Box::new(SimDevice::with_budget(budget as u64)),
        BackendKind::Ane => {
            crate::ane::availability()
                .map_err(|why| anyhow::anyhow!("backend ane is unavailable: {why} (use --backend ane-sim for the simulated device)"))?;
            Box::new(crate::ane::private::PrivateDevice::new()?.with_budget(budget as u64))
        }
    };
    Ok(Box::new(AneKernels::new(device, c, batch, seq, pipeline)?))
}
