//! Building the compute backend a run asked for, and the process's worker-thread count.
//! Above both `kernels/` (the `cpu` backend) and `ane/` (`ane`, `ane-sim`), so neither of
//! them knows about the other.

use super::gemm_choice::{Chosen, GemmChoice};
use crate::ane::{AneKernels, Pipeline, Profile};
use crate::kernels::{BackendKind, Kernels};
use crate::model::Config;
use anyhow::Result;

/// Sets the worker-thread count for rayon and the GEMMs (default: every core the process
/// may use). Returns it.
pub fn set_threads(threads: Option<usize>) -> usize {
    // 0 means every core, as for `tokenize --threads` and the GEMM.
    let n = threads.filter(|&n| n > 0).unwrap_or_else(|| {
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

/// The backend a run asked for: `--backend` and the options that shape it.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendChoice {
    pub kind: BackendKind,
    /// Neural Engine pipeline (ane, ane-sim).
    pub pipeline: Pipeline,
    /// Neural Engine compiles per process (default: the chip profile's).
    pub compile_budget: Option<u32>,
    /// Neural Engine chip profile (default: the chip this runs on, else `conservative`).
    pub ane_profile: Option<String>,
    /// Stop when the device refuses a program instead of running that kernel on the CPU.
    pub ane_strict: bool,
    /// The GEMM library of the CPU side (`--gemm`), selected by [`select_gemm`].
    pub gemm: GemmChoice,
}

impl BackendChoice {
    /// The fp32 CPU backend.
    pub fn cpu() -> BackendChoice {
        BackendChoice {
            kind: BackendKind::Cpu,
            pipeline: Pipeline::Dynamic,
            compile_budget: None,
            ane_profile: None,
            ane_strict: false,
            gemm: GemmChoice::Native,
        }
    }
}

/// Selects the process's GEMM engine for `choice` and the step shapes of `c` at
/// `batch × seq` (see [`super::gemm_choice`]); call after [`set_threads`].
pub fn select_gemm(choice: &GemmChoice, c: &Config, batch: usize, seq: usize) -> Result<Chosen> {
    super::gemm_choice::apply(choice, c, batch, seq)
}

/// Builds the backend `b` for config `c` and `batch × seq` token columns (the only geometry
/// it accepts: see [`crate::kernels::Spec`]). The Neural Engine
/// backends plan for the chip profile and, unless `ane_strict`, run a kernel whose program the
/// device refuses on the CPU.
pub fn make_kernels(
    b: &BackendChoice,
    c: &Config,
    batch: usize,
    seq: usize,
) -> Result<Box<dyn Kernels>> {
    if b.kind == BackendKind::Cpu {
        return Ok(Box::new(crate::kernels::cpu::CpuKernels::new(
            crate::kernels::Spec::new(c, batch, seq),
        )));
    }
    let profile = Profile::select(b.ane_profile.as_deref())?;
    let device = crate::ane::open_device(
        b.kind == BackendKind::AneSim,
        &profile,
        b.compile_budget.map(u64::from),
    )?;
    Ok(Box::new(AneKernels::build(
        device,
        c,
        batch,
        seq,
        b.pipeline,
        &profile,
        !b.ane_strict,
    )?))
}
