//! `anetrain mil`: print one Neural Engine kernel program and write its weight blobs, or
//! write every program of a training geometry, for inspection or for compiling by hand on a
//! Mac. Programs are generated for the planned geometry of the chip profile.

use crate::ane::mil::kernels::{generate, kernel_set, Kernel, LayerWeights, Pipeline};
use crate::ane::mil::Program;
use crate::kernels::ops::Rope;
use crate::model::ModelSource;

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Kernel name: fwdAttn, sdpaBwd1, sdpaBwd2, qkvBwd (both pipelines), fwdFFN, ffnBwd
    /// (static) or woFwd, fwdFFN, ffnBwdW2t, ffnBwdW13t, woBwd (dynamic).
    #[arg(long, required_unless_present = "all")]
    pub kernel: Option<String>,
    /// Every program of the geometry, one folder per program under --out.
    #[arg(long, requires = "out", conflicts_with = "kernel")]
    pub all: bool,
    /// Chip profile the programs are planned for (default: the chip this runs on, else
    /// conservative).
    #[arg(long)]
    pub ane_profile: Option<String>,
    /// Print each checker rule's verdict for every program generated (instead of the text).
    #[arg(long)]
    pub check: bool,
    /// A preset, a config file (.toml/.json) or a llama2.c model file (.bin, whose weights
    /// are baked into static-pipeline programs).
    #[arg(long, short, default_value = crate::train::settings::DEFAULT_MODEL)]
    pub model: String,
    /// Neural Engine pipeline: static (weights baked into programs) or dynamic (weights streamed through the input surface).
    #[arg(long, value_enum, default_value_t = Pipeline::Dynamic)]
    pub pipeline: Pipeline,
    /// Layer whose weights a static-pipeline program bakes in.
    #[arg(long, default_value_t = 0)]
    pub layer: usize,
    /// Tokens per sequence (default: 256, or the model's seq_len if smaller).
    #[arg(long, value_parser = super::at_least_one)]
    pub seq: Option<usize>,
    /// Sequences per call (the width of the attention-free kernels is batch·seq).
    #[arg(long, default_value_t = 1, value_parser = super::at_least_one)]
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
    let kernel = match &a.kernel {
        None => None,
        Some(name) => Some(Kernel::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Kernel::ALL.iter().map(|k| k.name()).collect();
            anyhow::anyhow!(
                "unknown kernel '{name}': expected one of {}",
                names.join(", ")
            )
        })?),
    };
    let bakes = a.pipeline == Pipeline::Static;
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
    let profile = crate::ane::Profile::select(a.ane_profile.as_deref())?;
    let plan = crate::ane::fit::plan(
        &cfg,
        a.batch,
        seq,
        a.pipeline,
        &profile,
        profile.compile_budget,
    )?;
    let kernels = match kernel {
        Some(k) => {
            if !kernel_set(a.pipeline).contains(&k) {
                let names: Vec<&str> = kernel_set(a.pipeline).iter().map(|k| k.name()).collect();
                bail!(
                    "{} is not a kernel of the {} pipeline (its kernels: {})",
                    k.name(),
                    a.pipeline,
                    names.join(", ")
                );
            }
            vec![k]
        }
        None => kernel_set(a.pipeline),
    };
    let rope = Rope::for_config(&cfg, seq);
    eprintln!(
        "profile {}: {} pipeline, dim {} → {}, hidden {} → {}, head_dim {} → {}, seq {} → {}, {} sequences per attention-free evaluation",
        profile.name,
        a.pipeline,
        plan.geo.dim_real,
        plan.geo.dim,
        plan.geo.hidden_real,
        plan.geo.hidden,
        plan.geo.head_dim_real,
        plan.geo.head_dim,
        plan.geo.seq_real,
        plan.geo.seq,
        plan.geo.chunk
    );
    for k in kernels {
        let w = params
            .as_ref()
            .filter(|_| bakes && k.has_weights())
            .map(|p| LayerWeights::from_params(p, a.layer));
        let prog = generate(a.pipeline, k, &plan.geo, w.as_ref(), &rope)?;
        if a.check {
            print_verdicts(&prog, &profile)?;
        } else if !a.all {
            print!("{}", prog.text);
        }
        eprintln!(
            "{} ({} pipeline): input [1, {}, 1, {}], output [1, {}, 1, {}], {} weight blob(s)",
            k.name(),
            a.pipeline,
            prog.input[1],
            prog.input[3],
            prog.output[1],
            prog.output[3],
            prog.weights.len()
        );
        if a.estimate {
            estimate(&prog)?;
        }
        match &a.out {
            Some(dir) => {
                let dir = if a.all {
                    dir.join(k.name())
                } else {
                    dir.clone()
                };
                write_program(&dir, &prog)?;
            }
            None => {
                for (path, blob) in &prog.weights {
                    eprintln!("  {path} ({} bytes; pass --out DIR to write)", blob.len());
                }
            }
        }
    }
    Ok(())
}

/// Every checker rule's verdict for one program under `profile`.
fn print_verdicts(prog: &Program, profile: &crate::ane::Profile) -> Result<()> {
    use crate::ane::check::{self, Rule};
    let ast = crate::ane::sim::parse::parse(&prog.text)?;
    let v = check::check(&ast, profile);
    println!("{} under profile {}:", prog.label, profile.name);
    for &r in Rule::ALL {
        let mine: Vec<_> = v.iter().filter(|x| x.rule == r).collect();
        let verdict = if !r.applies(profile) {
            "n/a on this profile".to_string()
        } else if mine.is_empty() {
            "pass".to_string()
        } else {
            format!("FAIL ({})", mine.len())
        };
        println!(
            "  {:<4} {:<24} {verdict:<22} {}",
            r.code(),
            r.name(),
            r.source()
        );
        for x in mine {
            println!("       line {}: {}", x.line, x.detail);
        }
    }
    Ok(())
}

fn estimate(prog: &Program) -> Result<()> {
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
    Ok(())
}

/// Writes `model.mil` and `weights/*.bin` into `dir` (the layout the runtime reads).
fn write_program(dir: &std::path::Path, prog: &Program) -> Result<()> {
    std::fs::create_dir_all(dir.join("weights"))
        .with_context(|| format!("{}: cannot create the output folder", dir.display()))?;
    let mil = dir.join("model.mil");
    std::fs::write(&mil, &prog.text).with_context(|| format!("{}: cannot write", mil.display()))?;
    for (path, blob) in &prog.weights {
        let rel = path.strip_prefix("@model_path/").unwrap_or(path);
        let f = dir.join(rel);
        std::fs::write(&f, blob).with_context(|| format!("{}: cannot write", f.display()))?;
    }
    eprintln!(
        "  wrote {} and {} weight blob(s)",
        mil.display(),
        prog.weights.len()
    );
    Ok(())
}
