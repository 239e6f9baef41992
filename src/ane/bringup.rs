//! First contact with a Neural Engine: `anetrain ane check`. For one training geometry,
//! every program of the plan is generated, checked against the chip profile, compiled,
//! evaluated and timed; the six kernels of the contract are compared with the CPU kernels on
//! random inputs at training scales; a program the device refuses is retried with the
//! documented alternatives (the other MIL dialect, the other RoPE form, narrower tiles) and the
//! profile override that worked is named. Everything lands in one [`CheckReport`], which a user
//! can attach to a bug report (`--json`).
//!
//! Without a Neural Engine the same runs on the simulated device, and the report says so: its
//! times are the cost model's, not measurements.

use crate::ane::chip::{self, Dialect, Profile, RopeForm};
use crate::ane::device::Device;
use crate::ane::fit::{self, Plan};
use crate::ane::mil::kernels::{generate, Kernel, LayerWeights, Pipeline};
use crate::ane::{check, sim, AneKernels};
use crate::kernels::cpu::CpuKernels;
use crate::kernels::ops::Rope;
use crate::kernels::{
    AttnFwd, AttnWeights, Checked, FfnBwd, FfnFwd, FfnWeights, Kernels, Pass, SdpaBwd1, SdpaBwd2,
};
use crate::model::{Config, Params};
use crate::util::rng::Rng;
use anyhow::Result;
use half::f16;
use std::time::Instant;

/// The tolerance a Neural Engine kernel must meet against the fp32 CPU kernel: the largest
/// |ane − cpu| of an output, relative to the largest |cpu| of that output. fp16 storage at
/// every op (11-bit significands) over contractions of a few thousand terms stays well
/// inside it; the kernel tests hold the simulator to 5e-3.
pub const TOLERANCE: f64 = 1e-2;

/// Makes a device for a profile (the real one, the simulator, or a test's instrumented one).
pub type DeviceFactory<'a> = dyn Fn(&Profile) -> Result<Box<dyn Device>> + 'a;

/// The machine the check ran on.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Machine {
    pub chip: Option<String>,
    pub cpu: String,
    pub cores: usize,
    pub performance_cores: Option<usize>,
    pub efficiency_cores: Option<usize>,
    pub os: String,
    pub framework: String,
    /// `None` when the framework loaded; else why not.
    pub framework_unavailable: Option<String>,
}

fn cmd(prog: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(prog).args(args).output().ok()?;
    let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !s.is_empty()).then_some(s)
}

impl Machine {
    pub fn detect() -> Machine {
        let mac = cfg!(target_os = "macos");
        let cpu = if mac {
            chip::brand_string()
        } else {
            std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|v| v.trim().to_string())
            })
        };
        let count = |key: &str| cmd("sysctl", &["-n", key]).and_then(|s| s.parse().ok());
        let os = if mac {
            format!(
                "macOS {}",
                cmd("sw_vers", &["-productVersion"]).unwrap_or_else(|| "?".into())
            )
        } else {
            cmd("uname", &["-sr"]).unwrap_or_else(|| std::env::consts::OS.into())
        };
        Machine {
            chip: chip::brand_string(),
            cpu: cpu.unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            performance_cores: if mac {
                count("hw.perflevel0.physicalcpu")
            } else {
                None
            },
            efficiency_cores: if mac {
                count("hw.perflevel1.physicalcpu")
            } else {
                None
            },
            os,
            framework: crate::ane::private::FRAMEWORK.into(),
            framework_unavailable: crate::ane::availability().err(),
        }
    }
}

/// One alternative tried after a refusal.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Alternative {
    pub change: String,
    pub profile: String,
    pub ok: bool,
    pub error: Option<String>,
}

/// One program of the plan.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramReport {
    pub kernel: &'static str,
    pub input: [usize; 4],
    pub output: [usize; 4],
    pub surface_bytes: usize,
    /// Profile rules the program breaks (always empty for the generators' programs).
    pub violations: Vec<String>,
    pub compiled: bool,
    pub compile_ms: Option<f64>,
    /// Median milliseconds per evaluation (measured, or the cost model's on the simulator).
    pub eval_ms: Option<f64>,
    pub evals: usize,
    /// The device's full error text when it refused the program.
    pub error: Option<String>,
    /// The rule or pattern suspected when the device refused a checked program.
    pub suspected: Option<String>,
    pub alternatives: Vec<Alternative>,
    /// The `--ane-profile` that made it compile, when an alternative did.
    pub implied_profile: Option<String>,
}

/// One kernel of the contract against the CPU kernel.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelCompare {
    pub kernel: &'static str,
    /// Largest relative error over the kernel's outputs, and the output it was in.
    pub max_rel_err: f64,
    pub worst_output: &'static str,
    pub tolerance: f64,
    pub ok: bool,
    /// Where it ran: the Neural Engine (`ane`, `ane-sim`) or `cpu` after a refusal.
    pub runs_on: String,
}

/// Everything `anetrain ane check` found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    pub anetrain: &'static str,
    pub machine: Machine,
    pub device: String,
    pub simulated: bool,
    /// "measured" on hardware, "cost model" on the simulator.
    pub times: &'static str,
    pub profile: Profile,
    pub model: String,
    pub batch: usize,
    pub seq: usize,
    pub pipeline: Pipeline,
    /// Why the planner refused the geometry, if it did (nothing else ran).
    pub refusal: Option<String>,
    pub plan: Option<Plan>,
    pub programs: Vec<ProgramReport>,
    pub kernels: Vec<KernelCompare>,
    /// Why the contract comparison could not run, if it could not.
    pub compare_error: Option<String>,
    /// Neural Engine evaluation time of one training step (forward + backward of every
    /// layer, one micro-batch) from the per-program times.
    pub ane_ms_per_step: Option<f64>,
    /// Static pipeline: compile time of one weight update (every layer's programs).
    pub compile_ms_per_update: Option<f64>,
    /// `ok`, `fallback` (some kernels would run on the CPU) or `fail`.
    pub verdict: &'static str,
}

/// What to check.
pub struct CheckSpec<'a> {
    pub model: String,
    pub cfg: Config,
    pub batch: usize,
    pub seq: usize,
    pub pipeline: Pipeline,
    pub profile: Profile,
    pub budget: Option<u64>,
    /// Evaluations per program and calls per contract kernel.
    pub evals: usize,
    pub simulated: bool,
    pub device: &'a DeviceFactory<'a>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    })
}

/// The rule a device refusal most likely comes from, for a program the checker accepted:
/// the rules whose reports disagree between chips.
fn suspect(k: Kernel, profile: &Profile) -> String {
    let mut s = vec![format!(
        "C9 dialect ({} literals; reports disagree per chip)",
        profile.dialect.name()
    )];
    if k == Kernel::FwdAttn {
        s.push(format!("C3 RoPE form ({:?})", profile.rope));
    }
    if !k.per_sequence() {
        s.push("C18 surface size (tiles)".into());
    }
    s.join("; ")
}

fn alternatives(k: Kernel, profile: &Profile, plan: &Plan) -> Vec<(String, String)> {
    let base = profile.name.clone();
    let mut v = Vec::new();
    let other = match profile.dialect {
        Dialect::Ios16 => "ios18",
        Dialect::Ios18 => "ios16",
    };
    v.push((
        format!("MIL dialect {other}"),
        format!("{base},dialect={other}"),
    ));
    if k == Kernel::FwdAttn {
        let other = match profile.rope {
            RopeForm::Permutation => "pairs",
            RopeForm::PairsConcat => "permutation",
        };
        v.push((format!("RoPE form {other}"), format!("{base},rope={other}")));
    }
    if !k.per_sequence() && plan.geo.chunk > 1 {
        let sp = plan.spec(k);
        let biggest = sp.input.bytes().max(sp.output.bytes());
        let mb = (biggest / 2).div_ceil(1 << 20).max(1);
        v.push((
            format!("narrower tiles (surfaces ≤ {mb} MiB)"),
            format!("{base},max-surface-mb={mb}"),
        ));
    }
    v
}

/// A program the device accepted, with the device that holds it.
struct Compiled {
    prog: crate::ane::mil::Program,
    ms: f64,
    dev: Box<dyn Device>,
    id: crate::ane::device::ProgramId,
}

/// `k`'s program for `profile`'s plan (layer 0's weights for the static pipeline).
fn program_for(
    spec: &CheckSpec,
    k: Kernel,
    profile: &Profile,
    params: &Params,
    rope: &Rope,
) -> Result<crate::ane::mil::Program> {
    let budget = spec.budget.unwrap_or(profile.compile_budget);
    let plan = fit::plan(
        &spec.cfg,
        spec.batch,
        spec.seq,
        spec.pipeline,
        profile,
        budget,
    )?;
    let w = (spec.pipeline == Pipeline::Static && k.has_weights())
        .then(|| LayerWeights::from_params(params, 0));
    generate(spec.pipeline, k, &plan.geo, w.as_ref(), rope)
}

/// Compiles `prog` on a fresh device for `profile`.
fn compile_on(
    spec: &CheckSpec,
    profile: &Profile,
    prog: crate::ane::mil::Program,
) -> Result<Compiled> {
    let mut dev = (spec.device)(profile)?;
    let t = Instant::now();
    let id = dev.compile(&prog)?;
    Ok(Compiled {
        prog,
        ms: t.elapsed().as_secs_f64() * 1e3,
        dev,
        id,
    })
}

/// Runs the check. `progress` receives one line per step of the work.
pub fn run(spec: &CheckSpec, progress: &mut dyn FnMut(&str)) -> Result<CheckReport> {
    let profile = spec.profile.clone();
    let budget = spec.budget.unwrap_or(profile.compile_budget);
    let mut rep = CheckReport {
        anetrain: env!("CARGO_PKG_VERSION"),
        machine: Machine::detect(),
        device: if spec.simulated { "ane-sim" } else { "ane" }.into(),
        simulated: spec.simulated,
        times: if spec.simulated {
            "cost model"
        } else {
            "measured"
        },
        profile: profile.clone(),
        model: spec.model.clone(),
        batch: spec.batch,
        seq: spec.seq,
        pipeline: spec.pipeline,
        refusal: None,
        plan: None,
        programs: Vec::new(),
        kernels: Vec::new(),
        compare_error: None,
        ane_ms_per_step: None,
        compile_ms_per_update: None,
        verdict: "fail",
    };
    let plan = match fit::plan(
        &spec.cfg,
        spec.batch,
        spec.seq,
        spec.pipeline,
        &profile,
        budget,
    ) {
        Ok(p) => p,
        Err(e) => {
            rep.refusal = Some(format!("{e:#}"));
            return Ok(rep);
        }
    };
    // One layer is enough: every layer runs the same programs.
    let mut cfg1 = spec.cfg.clone();
    cfg1.n_layers = 1;
    let params = Params::init_random(&cfg1, 1);
    let rope = Rope::for_config(&spec.cfg, spec.seq);
    let mut rng = Rng::new(3);
    for k in plan.kernels() {
        progress(&format!("{}: generate, check, compile", k.name()));
        let sp = plan.spec(k);
        let mut pr = ProgramReport {
            kernel: k.name(),
            input: sp.input.shape(),
            output: sp.output.shape(),
            surface_bytes: sp.input.bytes() + sp.output.bytes(),
            violations: Vec::new(),
            compiled: false,
            compile_ms: None,
            eval_ms: None,
            evals: 0,
            error: None,
            suspected: None,
            alternatives: Vec::new(),
            implied_profile: None,
        };
        let prog = program_for(spec, k, &profile, &params, &rope)?;
        match sim::parse::parse(&prog.text) {
            Ok(ast) => {
                pr.violations = check::check(&ast, &profile)
                    .iter()
                    .map(|v| v.to_string())
                    .collect()
            }
            Err(e) => pr.violations.push(format!("does not parse: {e:#}")),
        }
        match compile_on(spec, &profile, prog) {
            Ok(Compiled {
                prog,
                ms,
                mut dev,
                id,
            }) => {
                pr.compiled = true;
                pr.compile_ms = Some(ms);
                progress(&format!("{}: evaluate ×{}", k.name(), spec.evals));
                let (i, o) = (
                    dev.create_surface(prog.input.iter().product())?,
                    dev.create_surface(prog.output.iter().product())?,
                );
                dev.write_surface(i, &mut |buf| {
                    for x in buf.iter_mut() {
                        *x = f16::from_f32(rng.normal() * 0.5);
                    }
                })?;
                let mut times = Vec::new();
                for _ in 0..spec.evals {
                    let t = Instant::now();
                    match dev.evaluate(id, &[i], &[o]) {
                        Ok(()) => times.push(
                            dev.estimated_eval_ms(id)
                                .unwrap_or(t.elapsed().as_secs_f64() * 1e3),
                        ),
                        Err(e) => {
                            pr.error = Some(format!("evaluation failed: {e:#}"));
                            break;
                        }
                    }
                }
                pr.evals = times.len();
                pr.eval_ms = median(times);
                let _ = dev.free(id);
            }
            Err(e) => {
                pr.error = Some(format!("{e:#}"));
                pr.suspected = Some(suspect(k, &profile));
                for (change, name) in alternatives(k, &profile, &plan) {
                    progress(&format!("{}: refused; trying {change}", k.name()));
                    let alt = Profile::named(&name)?;
                    let r = program_for(spec, k, &alt, &params, &rope)
                        .and_then(|p| compile_on(spec, &alt, p));
                    let ok = r.is_ok();
                    pr.alternatives.push(Alternative {
                        change,
                        profile: name.clone(),
                        ok,
                        error: r.err().map(|e| format!("{e:#}")),
                    });
                    if ok {
                        pr.implied_profile = Some(name);
                        break;
                    }
                }
            }
        }
        rep.programs.push(pr);
    }
    // The contract, kernel by kernel, against the CPU.
    progress("the six kernels against the CPU kernels");
    match compare(spec, &cfg1, &params, &profile) {
        Ok(k) => rep.kernels = k,
        Err(e) => rep.compare_error = Some(format!("{e:#}")),
    }
    let per_eval: Option<f64> = rep
        .programs
        .iter()
        .zip(plan.kernels())
        .map(|(p, k)| p.eval_ms.map(|ms| ms * plan.evals_per_call(k) as f64))
        .sum();
    rep.ane_ms_per_step = per_eval.map(|ms| ms * spec.cfg.n_layers as f64);
    if spec.pipeline == Pipeline::Static {
        rep.compile_ms_per_update = rep
            .programs
            .iter()
            .zip(plan.kernels())
            .filter(|(_, k)| k.has_weights())
            .map(|(p, _)| p.compile_ms)
            .sum::<Option<f64>>()
            .map(|ms| ms * spec.cfg.n_layers as f64);
    }
    let all_compiled = rep.programs.iter().all(|p| p.compiled && p.error.is_none());
    let all_close =
        !rep.kernels.is_empty() && rep.kernels.iter().all(|k| k.ok && k.runs_on != "cpu");
    rep.verdict = if all_compiled && all_close {
        "ok"
    } else if rep.programs.iter().any(|p| p.compiled) {
        "fallback"
    } else {
        "fail"
    };
    rep.plan = Some(plan);
    Ok(rep)
}

/// (largest |a − b| / largest |b|) over one output.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0f64, |m, &x| m.max(x.abs() as f64))
        .max(1e-30);
    let e = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(
            0f64,
            |m, d| if d.is_nan() { f64::INFINITY } else { m.max(d) },
        );
    e / scale
}

fn compare(
    spec: &CheckSpec,
    cfg1: &Config,
    params: &Params,
    profile: &Profile,
) -> Result<Vec<KernelCompare>> {
    let dev = (spec.device)(profile)?;
    // With fallback: a refused program's kernel runs on the CPU, the others are still compared.
    let mut ane = AneKernels::build(
        dev,
        cfg1,
        spec.batch,
        spec.seq,
        spec.pipeline,
        profile,
        true,
    )?;
    // The CPU backend is built for the same spec (geometry, epsilon, RoPE table).
    let mut cpu = CpuKernels::new(ane.spec().clone());
    ane.prepare(1, Pass::Training)?;
    let d = ane.dims();
    let (dm, h, qd, kvd, n, pl) = (d.dim, d.hidden, d.q_dim(), d.kv_dim(), d.n(), d.probs_len());
    let mut rng = Rng::new(9);
    let mut randn =
        |len: usize, s: f32| -> Vec<f32> { (0..len).map(|_| rng.normal() * s).collect() };
    let x = randn(dm * n, 1.0);
    let dy = randn(dm * n, 1.0);
    let aw = AttnWeights::of(params, 0);
    let fw = FfnWeights::of(params, 0);
    type Outs = Vec<(&'static str, Vec<f32>)>;
    let mut results: Vec<(&'static str, Outs, Outs)> = Vec::new();
    // Each kernel runs on both backends from the same (CPU-computed) inputs.
    let fwd = |k: &mut dyn Kernels| -> Result<Outs> {
        let (mut xn, mut q, mut kk, mut v, mut at, mut o) = (
            vec![0.0; dm * n],
            vec![0.0; qd * n],
            vec![0.0; kvd * n],
            vec![0.0; kvd * n],
            vec![0.0; qd * n],
            vec![0.0; dm * n],
        );
        for _ in 0..spec.evals.max(1) {
            Checked::new(k).fwd_attn(
                0,
                &x,
                &aw,
                AttnFwd {
                    xn: &mut xn,
                    q: &mut q,
                    k: &mut kk,
                    v: &mut v,
                    attn: &mut at,
                    o: &mut o,
                },
            )?;
        }
        Ok(vec![
            ("xn", xn),
            ("q", q),
            ("k", kk),
            ("v", v),
            ("attn", at),
            ("o", o),
        ])
    };
    let (a, c) = (fwd(&mut ane)?, fwd(&mut cpu)?);
    let (q, kk, v) = (c[1].1.clone(), c[2].1.clone(), c[3].1.clone());
    results.push(("fwd_attn", a, c));
    let ffn = |k: &mut dyn Kernels| -> Result<Outs> {
        let mut o: Vec<Vec<f32>> = vec![
            vec![0.0; dm * n],
            vec![0.0; h * n],
            vec![0.0; h * n],
            vec![0.0; h * n],
            vec![0.0; dm * n],
        ];
        let [x2n, h1, h3, gate, f] = &mut o[..] else {
            unreachable!()
        };
        for _ in 0..spec.evals.max(1) {
            Checked::new(k).fwd_ffn(
                0,
                &x,
                &fw,
                FfnFwd {
                    x2n,
                    h1,
                    h3,
                    gate,
                    f,
                },
            )?;
        }
        Ok(["x2n", "h1", "h3", "gate", "f"]
            .into_iter()
            .zip(o)
            .collect())
    };
    let (a, c) = (ffn(&mut ane)?, ffn(&mut cpu)?);
    let (h1, h3) = (c[1].1.clone(), c[2].1.clone());
    results.push(("fwd_ffn", a, c));
    let fb = |k: &mut dyn Kernels| -> Result<Outs> {
        let mut o = vec![vec![0.0; dm * n], vec![0.0; h * n], vec![0.0; h * n]];
        let [dx2n, dh1, dh3] = &mut o[..] else {
            unreachable!()
        };
        for _ in 0..spec.evals.max(1) {
            Checked::new(k).ffn_bwd(0, &dy, &h1, &h3, &fw, FfnBwd { dx2n, dh1, dh3 })?;
        }
        Ok(["dx2n", "dh1", "dh3"].into_iter().zip(o).collect())
    };
    let (a, c) = (fb(&mut ane)?, fb(&mut cpu)?);
    results.push(("ffn_bwd", a, c));
    let s1 = |k: &mut dyn Kernels| -> Result<Outs> {
        let mut o = vec![vec![0.0; kvd * n], vec![0.0; pl], vec![0.0; pl]];
        let [dv, dp, probs] = &mut o[..] else {
            unreachable!()
        };
        for _ in 0..spec.evals.max(1) {
            Checked::new(k).sdpa_bwd1(0, &dy, &q, &kk, &v, &aw, SdpaBwd1 { dv, dp, probs })?;
        }
        Ok(["dv", "dp", "probs"].into_iter().zip(o).collect())
    };
    let (a, c) = (s1(&mut ane)?, s1(&mut cpu)?);
    let (dvv, dpp, pp) = (c[0].1.clone(), c[1].1.clone(), c[2].1.clone());
    results.push(("sdpa_bwd1", a, c));
    let s2 = |k: &mut dyn Kernels| -> Result<Outs> {
        let mut o = vec![vec![0.0; qd * n], vec![0.0; kvd * n]];
        let [dq, dk] = &mut o[..] else { unreachable!() };
        for _ in 0..spec.evals.max(1) {
            Checked::new(k).sdpa_bwd2(0, &pp, &dpp, &q, &kk, SdpaBwd2 { dq, dk })?;
        }
        Ok(["dq", "dk"].into_iter().zip(o).collect())
    };
    let (a, c) = (s2(&mut ane)?, s2(&mut cpu)?);
    let (dq, dk) = (c[0].1.clone(), c[1].1.clone());
    results.push(("sdpa_bwd2", a, c));
    let qb = |k: &mut dyn Kernels| -> Result<Outs> {
        let mut dxn = vec![0.0; dm * n];
        for _ in 0..spec.evals.max(1) {
            Checked::new(k).qkv_bwd(0, &dq, &dk, &dvv, &aw, &mut dxn)?;
        }
        Ok(vec![("dxn", dxn)])
    };
    let (a, c) = (qb(&mut ane)?, qb(&mut cpu)?);
    results.push(("qkv_bwd", a, c));
    let place = ane.placement();
    Ok(results
        .into_iter()
        .map(|(kernel, a, c)| {
            let (worst_output, max_rel_err) = a
                .iter()
                .zip(&c)
                .map(|((name, x), (_, y))| (*name, rel_err(x, y)))
                .fold(("", 0f64), |m, e| if e.1 >= m.1 { e } else { m });
            KernelCompare {
                kernel,
                max_rel_err,
                worst_output,
                tolerance: TOLERANCE,
                ok: max_rel_err <= TOLERANCE,
                runs_on: place
                    .iter()
                    .find(|(k, _)| *k == kernel)
                    .map_or_else(String::new, |(_, d)| d.clone()),
            }
        })
        .collect())
}

impl CheckReport {
    /// The report as a terminal table.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "anetrain {} ane check", self.anetrain);
        let _ = writeln!(
            s,
            "machine: {} · {} · {} cores{} · {}",
            m.chip.as_deref().unwrap_or("no Apple chip"),
            m.cpu,
            m.cores,
            match (m.performance_cores, m.efficiency_cores) {
                (Some(p), Some(e)) => format!(" ({p}P + {e}E)"),
                _ => String::new(),
            },
            m.os
        );
        let _ = writeln!(
            s,
            "framework: {} ({})",
            m.framework,
            match &m.framework_unavailable {
                None => "loaded".to_string(),
                Some(w) => format!("unavailable: {}", w.lines().next().unwrap_or("")),
            }
        );
        if self.simulated {
            let _ = writeln!(
                s,
                "device: ane-sim — SIMULATED. There is no Neural Engine here: programs run on the \
                 simulator; evaluation times are its cost model's estimates and compile times \
                 its own parsing, not Neural Engine measurements."
            );
        } else {
            let _ = writeln!(s, "device: ane (the Neural Engine; times measured)");
        }
        let _ = writeln!(
            s,
            "profile: {} · model {} · batch {} × seq {} · {} pipeline",
            self.profile.name, self.model, self.batch, self.seq, self.pipeline
        );
        if let Some(r) = &self.refusal {
            let _ = writeln!(s, "\nrefused before compiling: {r}");
            let _ = writeln!(s, "verdict: {}", self.verdict);
            return s;
        }
        let _ = writeln!(
            s,
            "\n{:<11} {:>22} {:>22} {:>6} {:>11} {:>11}  verdict",
            "program", "input", "output", "rules", "compile ms", "eval ms"
        );
        let f = |x: Option<f64>| x.map_or("—".to_string(), |v| format!("{v:.3}"));
        for p in &self.programs {
            let verdict = if p.compiled && p.error.is_none() {
                "ok".to_string()
            } else if let Some(o) = &p.implied_profile {
                format!("REFUSED; works with --ane-profile {o}")
            } else {
                "REFUSED; falls back to the CPU".to_string()
            };
            let _ = writeln!(
                s,
                "{:<11} {:>22} {:>22} {:>6} {:>11} {:>11}  {verdict}",
                p.kernel,
                format!("{:?}", p.input),
                format!("{:?}", p.output),
                if p.violations.is_empty() {
                    "pass".to_string()
                } else {
                    format!("{} ✗", p.violations.len())
                },
                f(p.compile_ms),
                f(p.eval_ms),
            );
            for v in &p.violations {
                let _ = writeln!(s, "    rule: {v}");
            }
            if let Some(e) = &p.error {
                let _ = writeln!(s, "    error: {e}");
                if let Some(sus) = &p.suspected {
                    let _ = writeln!(s, "    suspected: {sus}");
                }
                for a in &p.alternatives {
                    let _ = writeln!(
                        s,
                        "    tried {}: {}",
                        a.change,
                        if a.ok {
                            "compiles".to_string()
                        } else {
                            format!("refused ({})", a.error.as_deref().unwrap_or(""))
                        }
                    );
                }
            }
        }
        if !self.kernels.is_empty() {
            let _ = writeln!(
                s,
                "\n{:<10} {:>12} {:>10}  verdict (vs the fp32 CPU kernel, random inputs)",
                "kernel", "max rel err", "tolerance"
            );
            for k in &self.kernels {
                let _ = writeln!(
                    s,
                    "{:<10} {:>12.2e} {:>10.0e}  {} ({}){}",
                    k.kernel,
                    k.max_rel_err,
                    k.tolerance,
                    if k.ok { "ok" } else { "OUT OF TOLERANCE" },
                    k.worst_output,
                    if k.runs_on == "cpu" {
                        " — ran on the CPU (fallback)"
                    } else {
                        ""
                    }
                );
            }
        }
        if let Some(e) = &self.compare_error {
            let _ = writeln!(s, "\nkernel comparison not run: {e}");
        }
        if let Some(ms) = self.ane_ms_per_step {
            let _ = writeln!(
                s,
                "\nNeural Engine time per step (one micro-batch, every layer): {ms:.1} ms ({})",
                self.times
            );
        }
        if let Some(ms) = self.compile_ms_per_update {
            let _ = writeln!(s, "compiles per weight update (static): {ms:.0} ms");
        }
        let _ = writeln!(s, "verdict: {}", self.verdict);
        s
    }
}
