//! The efficiency report printed at the end of training (and by `bench`): steps, wall time,
//! ms/step, time per component, FLOPs per step and achieved GFLOP/s against the measured peak.

use super::timing::{Component, Timings};
use super::trainer::Settings;
use crate::kernels::BackendStats;
use crate::model::{Config, StepFlops};

pub struct Report {
    pub steps: u64,
    pub wall_s: f64,
    pub ms_per_step: f64,
    pub flops_per_step: f64,
    pub gflops: f64,
    pub peak_gflops: f64,
    pub tokens_per_step: u64,
    pub components: Vec<(&'static str, f64)>,
    pub backend: BackendStats,
    pub backend_name: String,
}

impl Report {
    /// `cum` holds the components' milliseconds summed over all steps of this process and
    /// earlier processes of the run (checkpointed); `steps` counts this process's steps.
    pub fn new(
        c: &Config,
        s: &Settings,
        steps: u64,
        wall_s: f64,
        cum: &Timings,
        backend: BackendStats,
        peak_gflops: f64,
    ) -> Report {
        let accum = s.accum.max(1);
        let flops = StepFlops::new(c, s.batch, s.seq).total() * accum as f64;
        let ms = if steps > 0 {
            wall_s * 1e3 / steps as f64
        } else {
            0.0
        };
        let total_ms = cum.total().max(1e-9);
        let components = Component::ALL
            .iter()
            .filter(|k| cum.get(**k) > 0.0)
            .map(|k| (k.name(), cum.get(*k) / total_ms))
            .collect();
        Report {
            steps,
            wall_s,
            ms_per_step: ms,
            flops_per_step: flops,
            gflops: if ms > 0.0 { flops / (ms * 1e6) } else { 0.0 },
            peak_gflops,
            tokens_per_step: (s.batch * s.seq * accum) as u64,
            components,
            backend,
            backend_name: s.backend.to_string(),
        }
    }

    pub fn print(&self) {
        eprintln!("=== efficiency report ({}) ===", self.backend_name);
        eprintln!("steps            {}", self.steps);
        eprintln!("wall time        {:.1} s", self.wall_s);
        eprintln!(
            "per step         {:.1} ms  ({:.0} tokens/s)",
            self.ms_per_step,
            self.tokens_per_step as f64 / (self.ms_per_step / 1e3).max(1e-12)
        );
        eprintln!(
            "FLOPs per step   {:.3} GFLOP  -> {:.1} GFLOP/s{}",
            self.flops_per_step / 1e9,
            self.gflops,
            if self.peak_gflops > 0.0 {
                format!(
                    " = {:.1}% of the measured FMA peak {:.0} GFLOP/s",
                    100.0 * self.gflops / self.peak_gflops,
                    self.peak_gflops
                )
            } else {
                String::new()
            }
        );
        eprintln!("time by component (share of accounted time, whole run)");
        for (name, frac) in &self.components {
            eprintln!(
                "  {name:14} {:5.1}%  {:.1} ms/step",
                100.0 * frac,
                frac * self.ms_per_step
            );
        }
        if self.backend.compiles > 0 {
            eprintln!(
                "compiles         {} ({:.0} ms), surface I/O {:.0} ms",
                self.backend.compiles, self.backend.compile_ms, self.backend.io_ms
            );
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let comps: serde_json::Map<String, serde_json::Value> = self
            .components
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v * self.ms_per_step)))
            .collect();
        serde_json::json!({
            "steps": self.steps,
            "wall_s": self.wall_s,
            "ms_per_step": self.ms_per_step,
            "flops_per_step": self.flops_per_step,
            "gflops": self.gflops,
            "peak_gflops": self.peak_gflops,
            "mfu": if self.peak_gflops > 0.0 { self.gflops / self.peak_gflops } else { 0.0 },
            "timing": comps,
            "compiles": self.backend.compiles,
            "compile_ms": self.backend.compile_ms,
            "io_ms": self.backend.io_ms,
        })
    }
}
