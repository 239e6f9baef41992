//! What runs report: [`Report`], the efficiency report printed (and logged) at the end of
//! training — steps, wall time, ms/step, each component's share, FLOPs per step and GFLOP/s
//! against the measured FMA peak; and [`BenchReport`], the table or JSON of `anetrain bench`
//! (median/min/max ms per step and per sequence, tokens/s, MFU, page faults, memory, ms per
//! component).

use super::bench::{BenchRun, BenchSpec};
use super::gemm_choice::Chosen;
use super::settings::Settings;
use super::timing::{Component, Timings};
use crate::kernels::BackendStats;
use crate::model::{Config, StepFlops};
use crate::util::peak::Peak;

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
        for line in self.backend.device_lines(self.steps as f64) {
            eprintln!("{line}");
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
            "fallback_cpu_ms": self.backend.fallback_cpu_ms,
            "on_cpu": self.backend.on_cpu,
            "ane_times": if self.backend.measured { "measured" } else { "cost model" },
            "programs": self.backend.programs,
        })
    }
}

/// Median, min and max of a non-empty sample.
fn median_min_max(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|x, y| x.total_cmp(y));
    let n = s.len();
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    };
    (med, s[0], s[n - 1])
}

/// The figures of one `anetrain bench` run.
pub struct BenchReport {
    /// A `--json` object with every figure; [`BenchReport::print`] prints the table.
    pub json: serde_json::Value,
    table: Vec<String>,
}

impl BenchReport {
    /// `model` and `backend` are labels for the output; `peak` the FMA peak measured with
    /// the same thread count; `rss` the process's peak resident set if known.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c: &Config,
        model: &str,
        backend: &str,
        threads: usize,
        spec: &BenchSpec,
        run: &BenchRun,
        peak: &Peak,
        rss: Option<u64>,
        gemm: &Chosen,
        ceiling_ms: f64,
    ) -> BenchReport {
        let (ms_step, min, max) = median_min_max(&run.step_ms);
        let (accum, n) = (spec.accum, spec.batch * spec.seq);
        let seqs = (accum * spec.batch) as f64;
        let ms_seq = ms_step / seqs;
        let flops = StepFlops::new(c, spec.batch, spec.seq).total() * accum as f64;
        let gflops = flops / (ms_step * 1e6);
        let tps = (n * accum) as f64 / (ms_step / 1e3);
        let mfu = gflops / peak.gflops;
        let steps_f = spec.steps as f64;
        let faults = run.page_faults as f64 / steps_f;
        let (mem_params, mem_acts) =
            crate::model::config::training_memory_bytes(c, spec.batch, spec.seq);
        let comps: serde_json::Map<String, serde_json::Value> = run
            .timings
            .entries()
            .into_iter()
            .map(|(k, v)| (k.to_string(), serde_json::json!(v / steps_f)))
            .collect();
        let json = serde_json::json!({
            "model": model, "backend": backend, "batch": spec.batch, "seq": spec.seq,
            "accum": accum, "threads": threads, "steps": spec.steps, "warmup": spec.warmup,
            "ms_per_step": ms_step, "ms_per_step_min": min, "ms_per_step_max": max,
            "ms_per_seq": ms_seq, "ms_per_seq_min": min / seqs, "ms_per_seq_max": max / seqs,
            "tokens_per_s": tps, "gflops": gflops, "flops_per_step": flops,
            "peak_gflops": peak.gflops, "peak_isa": peak.isa, "mfu": mfu,
            "timing_ms_per_step": comps, "page_faults_per_step": faults,
            "peak_rss_bytes": rss, "memory_model_bytes": mem_params + mem_acts,
            "gemm": gemm.label, "gemm_detail": gemm.describe, "gemm_how": gemm.how,
            "gemm_ceiling_ms_per_step": ceiling_ms, "step_over_gemm_ceiling": ms_step / ceiling_ms,
        });
        let mib = |b: u64| b as f64 / 1048576.0;
        let mut table = vec![
            format!(
                "{model} batch {} x seq {} x accum {accum} on {backend} ({threads} threads)",
                spec.batch, spec.seq
            ),
            format!(
                "  ms/step   median {ms_step:.1}  min {min:.1}  max {max:.1}  ({} steps after {} warm-up)",
                spec.steps, spec.warmup
            ),
            format!(
                "  ms/seq    median {ms_seq:.1}  min {:.1}  max {:.1}",
                min / seqs,
                max / seqs
            ),
            format!("  tokens/s  {tps:.0}"),
            format!(
                "  GEMM ceiling  {ceiling_ms:.1} ms/step (the step's GEMMs alone on {}): step = {:.2}x the ceiling",
                gemm.label,
                ms_step / ceiling_ms
            ),
            format!("  gemm      {}", gemm.describe),
            format!("  page faults per step  {faults:.0}"),
            format!(
                "  GFLOP/s   {gflops:.1} ({:.2} GFLOP/step) = MFU {:.1}% of the measured FMA peak {peak}",
                flops / 1e9,
                100.0 * mfu
            ),
        ];
        if let Some(r) = rss {
            table.push(format!(
                "  peak RSS  {:.0} MiB (model: {:.0} MiB = 16 B/param {:.0} + activations {:.0})",
                mib(r),
                mib(mem_params + mem_acts),
                mib(mem_params),
                mib(mem_acts)
            ));
        }
        table.push("  time per component (ms/step):".to_string());
        for (k, v) in run.timings.entries() {
            table.push(format!("    {k:14} {:8.1}", v / steps_f));
        }
        for line in run.backend.device_lines(steps_f) {
            table.push(format!("  {line}"));
        }
        let mut json = json;
        if !run.backend.programs.is_empty() {
            json["ane_times"] = serde_json::json!(if run.backend.measured {
                "measured"
            } else {
                "cost model"
            });
            json["programs"] = serde_json::json!(run.backend.programs);
            json["on_cpu"] = serde_json::json!(run.backend.on_cpu);
        }
        BenchReport { json, table }
    }

    /// The table, to stdout.
    pub fn print(&self) {
        for line in &self.table {
            println!("{line}");
        }
    }
}
