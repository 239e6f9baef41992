//! `anetrain info`: what a model is and what training it costs.

use crate::kernels::BackendKind;
use crate::model::config::training_memory_bytes;
use crate::model::{Config, StepFlops};
use anyhow::Result;

#[derive(clap::Args)]
pub struct Args {
    /// A preset (stories260k, stories15m, stories42m, stories110m, qwen3-0.6b-shape), a
    /// llama2.c model file (.bin), a checkpoint (.ckpt), a config file (.toml/.json) or a
    /// Hugging Face model folder (config.json + safetensors).
    #[arg(long, short, default_value = crate::train::settings::DEFAULT_MODEL)]
    pub model: String,
    /// Sequences per step, for the FLOP and memory figures.
    #[arg(long, default_value_t = 1, value_parser = super::at_least_one)]
    pub batch: usize,
    /// Tokens per sequence (default: 256, or the model's seq_len if smaller).
    #[arg(long, value_parser = super::at_least_one)]
    pub seq: Option<usize>,
    /// With ane or ane-sim: also print the Neural Engine plan (padding, tiles, programs,
    /// compiles per update, exec() restarts).
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// Neural Engine pipeline for the plan.
    #[arg(long, value_enum, default_value_t = crate::ane::Pipeline::Dynamic)]
    pub pipeline: crate::ane::Pipeline,
    /// Chip profile for the plan (default: the chip this runs on, else conservative).
    #[arg(long)]
    pub ane_profile: Option<String>,
    /// Compile budget per process for the plan (default: the profile's).
    #[arg(long)]
    pub compile_budget: Option<u64>,
}

fn m(x: usize) -> String {
    format!("{:.2}M", x as f64 / 1e6)
}

pub fn run(a: Args) -> Result<()> {
    let c = crate::train::load_config(&crate::model::ModelSource::resolve(&a.model)?)?;
    let seq = a.seq.unwrap_or(crate::train::settings::default_seq(&c));
    print_info(&a.model, &c, a.batch, seq);
    if matches!(a.backend, Some(BackendKind::Ane | BackendKind::AneSim)) {
        let profile = crate::ane::Profile::select(a.ane_profile.as_deref())?;
        let budget = a.compile_budget.unwrap_or(profile.compile_budget);
        let plan = crate::ane::fit::plan(&c, a.batch, seq, a.pipeline, &profile, budget)?;
        print!("{}", plan.describe());
    }
    Ok(())
}

pub fn print_info(name: &str, c: &Config, batch: usize, seq: usize) {
    println!("model {name}");
    println!(
        "  dim {}  hidden {}  layers {}  heads {}  kv_heads {}  head_dim {}  vocab {}  seq_len {}  classifier {}",
        c.dim,
        c.hidden_dim,
        c.n_layers,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.vocab_size,
        c.seq_len,
        if c.tied { "tied" } else { "untied" }
    );
    if let Some(o) = &c.hf {
        println!(
            "  Hugging Face {} ({}), {}, norm eps {:e}, rope theta {}{}{}",
            o.architecture,
            o.dir.display(),
            o.dtype,
            c.norm_eps,
            c.rope_theta,
            if c.rope_scaling.is_some() {
                ", llama3 rope scaling"
            } else {
                ""
            },
            if c.qk_norm {
                ", per-head q/k norms"
            } else {
                ""
            }
        );
    }
    println!(
        "  parameters {} = {} transformer + {} embedding{}",
        m(c.num_params()),
        m(c.transformer_params()),
        m(c.embedding_params()),
        if c.tied { "" } else { " (incl. classifier)" }
    );
    let f = StepFlops::new(c, batch, seq);
    let g = |x: f64| format!("{:.3}", x / 1e9);
    println!("FLOPs per training step at batch {batch} x seq {seq} (GFLOP)");
    println!(
        "  forward linears {}  backward-dx {}  backward-dW {}  attention {}  classifier {}  total {}",
        g(f.forward),
        g(f.backward_dx),
        g(f.backward_dw),
        g(f.attention),
        g(f.classifier),
        g(f.total())
    );
    println!("  linears F = 2·N·L·(D·QD + 2·D·KVD + QD·D + 3·D·H), N = batch·seq; forward, dx and dW each F");
    println!("  attention = 12·B·S²·QD·L (fwd QKᵀ, PV; bwd dP, dV, dQ, dK; masked half included)");
    println!("  classifier = 6·N·D·V (fwd, dx, dW)");
    let (p, act) = training_memory_bytes(c, batch, seq);
    let gib = |x: u64| x as f64 / (1u64 << 30) as f64;
    println!(
        "memory for training: {:.2} GiB = {:.2} GiB params+grads+AdamW (16 B/param) + {:.2} GiB activations",
        gib(p + act),
        gib(p),
        gib(act)
    );
    if let Some(avail) = crate::train::available_memory_bytes() {
        let fits = p + act <= avail;
        println!(
            "  this machine: {:.2} GiB available: {}",
            gib(avail),
            if fits {
                "fits"
            } else {
                "does not fit (a smaller --batch or --seq lowers the activations)"
            }
        );
    }
    println!("backends");
    for b in [BackendKind::Cpu, BackendKind::AneSim, BackendKind::Ane] {
        let s = match b {
            BackendKind::Cpu | BackendKind::AneSim => "available".to_string(),
            BackendKind::Ane => match crate::ane::availability() {
                Ok(()) => "available".into(),
                Err(why) => format!("unavailable: {why}"),
            },
        };
        println!("  {b:8} {s}");
    }
}
