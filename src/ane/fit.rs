//! The planner between the trainer's geometry and the Neural Engine programs: a pure
//! function of (model, batch, seq, pipeline, chip profile, compile budget) that pads, tiles
//! and checks, or refuses before anything is compiled with a message that names the rule and
//! a geometry that works.
//!
//! - **Channels**: `dim` and `hidden` are padded with zero rows/columns to the profile's
//!   channel multiple (C7); `head_dim` to the smallest even width that makes `n_heads·head_dim`
//!   a multiple too. `dim` and the query width also grow until the smallest surfaces reach
//!   the profile's minimum size (C7). Padded weights and activations are zero and are sliced
//!   away when unpacking, so results are unchanged.
//! - **Sequence**: padded to a power of two (C8: softmax lengths), at least the profile's
//!   minimum and aligned width (C7). Padding positions follow the real tokens, so causal
//!   attention never lets a real query see them and their gradients are exactly zero; the
//!   loss is over the real tokens only (the CPU side never sees the padding).
//! - **Tiles**: the attention-free kernels evaluate `chunk` sequences at a time, the largest
//!   divisor of the batch whose surfaces stay within the axis cap (C1) and the largest
//!   surface (C18).
//! - **Budget**: the static pipeline's compiles per weight update must fit the per-process
//!   budget (C14), else the plan refuses and names `--pipeline dynamic`.

use crate::ane::chip::{Profile, RopeForm};
use crate::ane::mil::kernels::{kernel_set, spec, Geometry, Kernel, KernelSpec, Pipeline};
use crate::model::Config;
use anyhow::{bail, Result};

/// A geometry the planner refuses, with the rule and what to pass instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the Neural Engine cannot run this geometry under the {profile} profile: rule {rule}: {detail}"
)]
pub struct Refusal {
    pub profile: String,
    pub rule: &'static str,
    pub detail: String,
}

/// What the programs of one training geometry look like on one chip.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    pub profile: Profile,
    pub pipeline: Pipeline,
    pub batch: usize,
    pub seq: usize,
    pub n_layers: usize,
    pub geo: Geometry,
    pub specs: Vec<KernelSpec>,
    /// The compile budget planned against.
    pub budget: u64,
}

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m.max(1)) * m.max(1)
}

/// Plans `cfg` at `batch` × `seq` for `pipeline` under `profile`, with `budget` compiles per
/// process (the profile's unless overridden).
pub fn plan(
    cfg: &Config,
    batch: usize,
    seq: usize,
    pipeline: Pipeline,
    profile: &Profile,
    budget: u64,
) -> Result<Plan> {
    cfg.validate()?;
    if batch == 0 || seq == 0 {
        bail!("Neural Engine plan: batch and seq must be positive");
    }
    if seq > cfg.seq_len {
        bail!(
            "Neural Engine plan: seq {seq} exceeds the model's seq_len {} (RoPE table)",
            cfg.seq_len
        );
    }
    if !cfg.head_dim.is_multiple_of(2) {
        bail!(
            "Neural Engine plan: head_dim {} is odd (RoPE pairs)",
            cfg.head_dim
        );
    }
    let refuse = |rule: &'static str, detail: String| -> anyhow::Error {
        Refusal {
            profile: profile.name.clone(),
            rule,
            detail,
        }
        .into()
    };
    let cm = profile.channel_multiple;
    let seq_p = seq
        .max(profile.min_width)
        .max(profile.width_multiple)
        .next_power_of_two();
    // Every surface is at least S wide and has at least D, H or Q channels: grow D, H and Q
    // until the smallest ([C, S]) reach the minimum bytes.
    let min_ch = profile.min_surface_bytes.div_ceil(2 * seq_p);
    let dim = round_up(cfg.dim.max(min_ch), cm);
    let hidden = round_up(cfg.hidden_dim.max(min_ch), cm);
    let nh = cfg.n_heads;
    let mut hd = cfg.head_dim;
    while !(nh * hd).is_multiple_of(cm) || nh * hd < min_ch {
        hd += 2;
    }
    let base = Geometry {
        dim,
        dim_real: cfg.dim,
        hidden,
        hidden_real: cfg.hidden_dim,
        n_heads: nh,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: hd,
        head_dim_real: cfg.head_dim,
        seq: seq_p,
        seq_real: seq,
        chunk: 1,
        eps: cfg.norm_eps,
        rope: profile.rope,
        dialect: profile.dialect,
        channel_multiple: cm,
        align: profile.width_multiple,
    };
    let kernels = kernel_set(pipeline);
    let fits = |s: &KernelSpec| -> Option<(&'static str, String)> {
        for (what, l) in [("input", &s.input), ("output", &s.output)] {
            if l.channels % cm != 0
                || l.width % profile.width_multiple != 0
                || l.width < profile.min_width
                || l.bytes() < profile.min_surface_bytes
            {
                // The padding above makes every surface aligned and large enough; this is a
                // planner defect if it ever triggers.
                return Some((
                    "C7 surface-min-align",
                    format!(
                        "{} {what} [1, {}, 1, {}] is not aligned or too small (planner defect; \
                         use --backend cpu)",
                        s.kernel.name(),
                        l.channels,
                        l.width
                    ),
                ));
            }
            if l.width > profile.max_axis {
                return Some((
                    "C1 axis-cap",
                    format!(
                        "{} {what} is {} columns wide, above {}",
                        s.kernel.name(),
                        l.width,
                        profile.max_axis
                    ),
                ));
            }
            if l.channels > profile.max_channels {
                return Some((
                    "C1 axis-cap",
                    format!(
                        "{} {what} has {} channels, above {}",
                        s.kernel.name(),
                        l.channels,
                        profile.max_channels
                    ),
                ));
            }
            if l.bytes() > profile.max_surface_bytes {
                return Some((
                    "C18 surface-max",
                    format!(
                        "{} {what} is {:.1} MB, above {:.1} MB",
                        s.kernel.name(),
                        l.bytes() as f64 / 1e6,
                        profile.max_surface_bytes as f64 / 1e6
                    ),
                ));
            }
        }
        None
    };
    // Per-sequence limits that no tiling changes.
    let mut probe = base.clone();
    let per_seq_problem = |g: &Geometry| -> Option<(&'static str, String)> {
        if g.rope == RopeForm::PairsConcat && g.seq * g.head_dim / 2 > profile.max_axis {
            return Some((
                "C1 axis-cap",
                format!(
                    "the RoPE pairs axis is S·HD/2 = {} long, above {}",
                    g.seq * g.head_dim / 2,
                    profile.max_axis
                ),
            ));
        }
        for &k in &kernels {
            if !k.per_sequence() {
                continue;
            }
            let s = spec(pipeline, k, g).ok()?;
            if let Some(p) = fits(&s) {
                return Some(p);
            }
        }
        None
    };
    if let Some((rule, detail)) = per_seq_problem(&probe) {
        let mut ok = None;
        let mut s = seq_p / 2;
        while s >= profile.min_width.max(1) {
            probe.seq = s;
            probe.seq_real = s;
            if per_seq_problem(&probe).is_none() {
                ok = Some(s);
                break;
            }
            s /= 2;
        }
        let hint = match ok {
            Some(s) => format!("; --seq {s} fits (or use --backend cpu)"),
            None => "; no sequence length fits this model (use --backend cpu)".into(),
        };
        return Err(refuse(rule, format!("at seq {seq}: {detail}{hint}")));
    }
    // The largest chunk of sequences per attention-free evaluation that fits.
    let mut chosen = None;
    let mut last_problem = None;
    for c in (1..=batch).rev().filter(|c| batch.is_multiple_of(*c)) {
        let mut g = base.clone();
        g.chunk = c;
        let problem = kernels
            .iter()
            .filter(|k| !k.per_sequence())
            .find_map(|&k| spec(pipeline, k, &g).ok().and_then(|s| fits(&s)));
        match problem {
            None => {
                chosen = Some(g);
                break;
            }
            Some(p) => last_problem = Some(p),
        }
    }
    let Some(geo) = chosen else {
        let (rule, detail) = last_problem.expect("a problem was recorded");
        return Err(refuse(
            rule,
            format!(
                "even one sequence per evaluation is too large: {detail}; use a smaller model, \
                 a chip profile with larger surfaces (--ane-profile m4 if this is an M4 or M5) \
                 or --backend cpu"
            ),
        ));
    };
    let specs: Vec<KernelSpec> = kernels
        .iter()
        .map(|&k| spec(pipeline, k, &geo))
        .collect::<Result<_>>()?;
    let me = Plan {
        profile: profile.clone(),
        pipeline,
        batch,
        seq,
        n_layers: cfg.n_layers,
        geo,
        specs,
        budget,
    };
    if pipeline == Pipeline::Static {
        let need = me.compiles_per_update() + me.compiles_at_start();
        if need > budget {
            return Err(refuse(
                "C14 compile-budget",
                format!(
                    "the static pipeline compiles {} programs per weight update (+{} once) for {} \
                     layers, more than the {budget} compiles a process may make; use \
                     --pipeline dynamic (compiles {} programs once)",
                    me.compiles_per_update(),
                    me.compiles_at_start(),
                    cfg.n_layers,
                    kernel_set(Pipeline::Dynamic).len()
                ),
            ));
        }
    }
    Ok(me)
}

impl Plan {
    pub fn spec(&self, k: Kernel) -> &KernelSpec {
        self.specs
            .iter()
            .find(|s| s.kernel == k)
            .unwrap_or_else(|| panic!("{} is not in the plan", k.name()))
    }

    pub fn kernels(&self) -> Vec<Kernel> {
        self.specs.iter().map(|s| s.kernel).collect()
    }

    /// Programs compiled when the backend starts (static: the weight-free sdpaBwd2).
    pub fn compiles_at_start(&self) -> u64 {
        match self.pipeline {
            Pipeline::Dynamic => self.specs.len() as u64,
            Pipeline::Static => self
                .specs
                .iter()
                .filter(|s| !s.kernel.has_weights())
                .count() as u64,
        }
    }

    /// Programs one weight update compiles (0 for the dynamic pipeline).
    pub fn compiles_per_update(&self) -> u64 {
        match self.pipeline {
            Pipeline::Dynamic => 0,
            Pipeline::Static => {
                (self.specs.iter().filter(|s| s.kernel.has_weights()).count() * self.n_layers)
                    as u64
            }
        }
    }

    /// Weight updates one process can compile (static), `None` when unlimited.
    pub fn updates_per_process(&self) -> Option<u64> {
        let per = self.compiles_per_update();
        (per > 0).then(|| self.budget.saturating_sub(self.compiles_at_start()) / per)
    }

    /// exec() restarts per 100 optimizer steps (static pipeline).
    pub fn restarts_per_100_steps(&self) -> f64 {
        match self.updates_per_process() {
            None => 0.0,
            Some(0) => f64::INFINITY,
            Some(u) => 100.0 / u as f64,
        }
    }

    /// Evaluations of each kernel per layer and step (one micro-batch).
    pub fn evals_per_call(&self, k: Kernel) -> usize {
        if k.per_sequence() {
            self.batch
        } else {
            self.batch / self.geo.chunk
        }
    }

    /// The plan as `anetrain info --backend ane` prints it.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let g = &self.geo;
        let mut s = String::new();
        let pad = |real: usize, p: usize| {
            if real == p {
                format!("{real}")
            } else {
                format!("{real} → {p}")
            }
        };
        let _ = writeln!(
            s,
            "Neural Engine plan ({} pipeline, profile {}, MIL {}, RoPE {:?}):",
            self.pipeline,
            self.profile.name,
            g.dialect.name(),
            g.rope
        );
        let _ = writeln!(
            s,
            "  padding: dim {}, hidden {}, head_dim {}, seq {} (zero rows/columns; results unchanged)",
            pad(g.dim_real, g.dim),
            pad(g.hidden_real, g.hidden),
            pad(g.head_dim_real, g.head_dim),
            pad(g.seq_real, g.seq)
        );
        let _ = writeln!(
            s,
            "  tiles: attention kernels one sequence per evaluation; attention-free kernels {} of {} \
             sequences per evaluation ({} columns)",
            g.chunk,
            self.batch,
            g.cols()
        );
        if g.n_heads != g.n_kv_heads {
            let _ = writeln!(
                s,
                "  GQA: {} kv heads tiled to {} query heads at the surface boundary",
                g.n_kv_heads, g.n_heads
            );
        }
        let _ = writeln!(s, "  programs:");
        for sp in &self.specs {
            let _ = writeln!(
                s,
                "    {:<11} in [1, {:>5}, 1, {:>5}] {:>7.2} MB   out [1, {:>5}, 1, {:>5}] {:>7.2} MB   {}×/layer/call",
                sp.kernel.name(),
                sp.input.channels,
                sp.input.width,
                sp.input.bytes() as f64 / 1e6,
                sp.output.channels,
                sp.output.width,
                sp.output.bytes() as f64 / 1e6,
                self.evals_per_call(sp.kernel)
            );
        }
        let _ = writeln!(
            s,
            "  compiles: {} at start, {} per weight update; budget {} per process",
            self.compiles_at_start(),
            self.compiles_per_update(),
            self.budget
        );
        match self.updates_per_process() {
            None => {
                let _ = writeln!(
                    s,
                    "  exec() restarts: none (weights travel in the surfaces)"
                );
            }
            Some(u) => {
                let _ = writeln!(
                    s,
                    "  exec() restarts: every {u} weight updates ({:.1} per 100 optimizer steps)",
                    self.restarts_per_100_steps()
                );
            }
        }
        if let Some(n) = self.profile.throughput_decay_evals {
            let _ = writeln!(
                s,
                "  note: dual-die chips lose throughput after ≈{n} evaluations of a program (C19)"
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_geometry_is_padded_to_the_conservative_profile() {
        let c = Config::preset("stories260k").unwrap();
        let p = plan(&c, 8, 256, Pipeline::Dynamic, &Profile::conservative(), 100).unwrap();
        let g = &p.geo;
        assert_eq!((g.dim % 64, g.hidden, g.seq), (0, 192, 256));
        assert_eq!((g.n_heads * g.head_dim) % 64, 0);
        for s in &p.specs {
            for l in [&s.input, &s.output] {
                assert_eq!(l.channels % 64, 0, "{}", s.kernel.name());
                assert_eq!(l.width % 64, 0, "{}", s.kernel.name());
                assert!(l.bytes() >= 48 * 1024, "{}", s.kernel.name());
                assert!(l.bytes() <= 16 << 20, "{}", s.kernel.name());
            }
        }
    }

    #[test]
    fn refusals_name_the_rule_and_a_fix() {
        let c = Config::preset("stories110m").unwrap();
        let e = plan(
            &c,
            1,
            1024,
            Pipeline::Dynamic,
            &Profile::conservative(),
            100,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("C18") && e.contains("--seq 512"), "{e}");
        let q = Config::preset("qwen3-0.6b-shape").unwrap();
        let e = plan(&q, 1, 256, Pipeline::Static, &Profile::conservative(), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("C14") && e.contains("--pipeline dynamic"), "{e}");
        // A big batch is tiled, not refused.
        let p = plan(
            &c,
            24,
            256,
            Pipeline::Dynamic,
            &Profile::conservative(),
            100,
        )
        .unwrap();
        assert!(p.geo.chunk < 24 && 24 % p.geo.chunk == 0);
    }

    #[test]
    fn odd_sequences_are_padded_to_a_power_of_two() {
        let c = Config::preset("stories260k").unwrap();
        let p = plan(
            &c,
            2,
            100,
            Pipeline::Static,
            &Profile::named("m4").unwrap(),
            100,
        )
        .unwrap();
        assert_eq!((p.geo.seq, p.geo.seq_real), (128, 100));
    }
}
