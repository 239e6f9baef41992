//! `anetrain mil`: print one Neural Engine kernel program and write its weight blobs, for
//! inspection or for compiling by hand on a Mac.

use crate::ane::mil::kernels::{generate, kernel_set, Geometry, Kernel, LayerWeights, Pipeline};
use crate::kernels::ops::Rope;
use crate::model::ModelSource;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Kernel name: fwdAttn, fwdFFN, ffnBwd, sdpaBwd1, sdpaBwd2, qkvBwd (both pipelines) or
    /// ffnBwdW2t, ffnBwdW13t, woBwd, qBwd, kvBwd (dynamic).
    #[arg(long)]
    pub kernel: String,
    /// A preset, a config file (.toml/.json) or a llama2.c model file (.bin, whose weights
    /// are baked into static-pipeline programs).
    #[arg(long, short, default_value = "stories110m")]
    pub model: String,
    #[arg(long, value_enum, default_value_t = Pipeline::Static)]
    pub pipeline: Pipeline,
    /// Layer whose weights a static-pipeline program bakes in.
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// Tokens per sequence (default: 256, or the model's seq_len if smaller).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Sequences per call (the width of the attention-free kernels is batch·seq).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seed of the random weights used when --model is not a model file.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also compile the program on the simulated device and print its estimated Neural
    /// Engine time per evaluation (a cost-model estimate, not a measurement).
    #[arg(long)]
    pub estimate: bool,
    /// Folder to write `model.mil` and `weights/*.bin` into (the layout the Neural Engine
    /// runtime reads from its temporary directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let Some(kernel) = Kernel::from_name(&a.kernel) else {
        let names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
        bail!(
            "unknown kernel '{}': expected one of {}",
            a.kernel,
            names.join(", ")
        );
    };
    let bakes = a.pipeline == Pipeline::Static && kernel.has_weights();
    let src = ModelSource::resolve(&a.model)?;
    let (cfg, params) = if src.has_weights() || bakes {
        let p = crate::train::load_params(&src, a.seed)?;
        (p.config().clone(), Some(p))
    } else {
        (crate::train::load_config(&src)?, None)
    };
    let seq = a.seq.unwrap_or(crate::train::settings::default_seq(&cfg));
    if seq == 0 || seq > cfg.seq_len || a.batch == 0 {
        bail!("--seq must be in 1..={} and --batch positive", cfg.seq_len);
    }
    if a.layer >= cfg.n_layers {
        bail!("--layer {} of a {}-layer model", a.layer, cfg.n_layers);
    }
    let geo = Geometry::new(&cfg, a.batch, seq);
    if !kernel_set(a.pipeline, &geo).contains(&kernel) {
        let names: Vec<&str> = kernel_set(a.pipeline, &geo)
            .iter()
            .map(|k| k.name())
            .collect();
        bail!(
            "{} is not a kernel of the {} pipeline for this model (its kernels: {})",
            kernel.name(),
            a.pipeline,
            names.join(", ")
        );
    }
    let rope = Rope::new(cfg.head_dim, seq, cfg.rope_theta);
    let w = params
        .as_ref()
        .filter(|_| bakes)
        .map(|p| LayerWeights::from_params(p, a.layer));
    let prog = generate(a.pipeline, kernel, &geo, w.as_ref(), &rope)?;
    print!("{}", prog.text);
    eprintln!(
        "{} ({} pipeline): input [1, {}, 1, {}], output [1, {}, 1, {}], {} weight blob(s)",
        kernel.name(),
        a.pipeline,
        prog.input[1],
        prog.input[3],
        prog.output[1],
        prog.output[3],
        prog.weights.len()
    );
    if a.estimate {
        let plan = crate::ane::sim::compile_text(&prog.text, &prog.weights)?;
        let io = 2 * (prog.input.iter().product::<usize>() + prog.output.iter().product::<usize>());
        let cm = crate::ane::sim::CostModel::default();
        eprintln!(
            "  estimate (cost model: {} ms dispatch + max(FLOPs at {} TFLOPS, bytes at {} GB/s)): \
             {:.3} ms per evaluation; {:.3} GFLOP, {:.2} MB of constants, {:.2} MB of surfaces",
            cm.dispatch_ms,
            cm.compute_tflops,
            cm.bandwidth_gbs,
            cm.eval_ms(&plan, io),
            plan.flops / 1e9,
            plan.const_bytes as f64 / 1e6,
            io as f64 / 1e6
        );
    }
    match &a.out {
        Some(dir) => {
            std::fs::create_dir_all(dir.join("weights"))
                .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
            let mil = dir.join("model.mil");
            std::fs::write(&mil, &prog.text)
                .with_context(|| format!("{}: cannot write", mil.display()))?;
            for (path, blob) in &prog.weights {
                let rel = path.strip_prefix("@model_path/").unwrap_or(path);
                let f = dir.join(rel);
                std::fs::write(&f, blob)
                    .with_context(|| format!("{}: cannot write", f.display()))?;
                eprintln!("  wrote {} ({} bytes)", f.display(), blob.len());
            }
            eprintln!("  wrote {}", mil.display());
        }
        None => {
            for (path, blob) in &prog.weights {
                eprintln!("  {path} ({} bytes; pass --out DIR to write)", blob.len());
            }
        }
    }
    Ok(())
}
