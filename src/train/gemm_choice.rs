//! `--gemm auto|native|blas[=PATH]`: which library computes the GEMMs of a run
//! ([`crate::kernels::gemm::select`]), the step's GEMM list ([`step_gemms`]), the short
//! calibration behind `auto` and its cache, and the *GEMM ceiling* of `anetrain bench` (the
//! step's GEMMs alone).
//!
//! `auto`: Accelerate on macOS (it runs on the matrix coprocessor; one library thread per
//! call, our split above it). Elsewhere the fastest of native, BLAS with our split, and BLAS
//! with its own threads, timed on the step's own projection and classifier shapes (each
//! distinct shape once after a warm-up call, classifier shapes on a slice of the vocabulary,
//! weighted by how often one step runs it). The verdict is cached per machine (CPU model,
//! thread count, library) and shape set in `$XDG_CACHE_HOME/anetrain/gemm.json` (else
//! `~/.cache/anetrain/gemm.json`), so a machine calibrates a model shape once. Steps whose
//! GEMMs total under [`CALIBRATE_MIN_FLOP`] use native without timing anything: there the
//! measurement would be noise, and tiny runs stay bit-reproducible from process to process.

use crate::kernels::blas::Blas;
use crate::kernels::gemm::{self, Engine, Op, Selection, Threading};
use crate::model::Config;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `--gemm` asked for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum GemmChoice {
    #[default]
    Auto,
    Native,
    /// The system BLAS: the given library, else the first of [`crate::kernels::blas::candidates`].
    Blas(Option<PathBuf>),
}

impl std::str::FromStr for GemmChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<GemmChoice, String> {
        match s {
            "auto" => Ok(GemmChoice::Auto),
            "native" => Ok(GemmChoice::Native),
            "blas" => Ok(GemmChoice::Blas(None)),
            _ => match s.strip_prefix("blas=") {
                Some(p) if !p.is_empty() => Ok(GemmChoice::Blas(Some(PathBuf::from(p)))),
                _ => Err(format!(
                    "`{s}`: expected auto, native, blas or blas=PATH (a cblas_sgemm library)"
                )),
            },
        }
    }
}

impl std::fmt::Display for GemmChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GemmChoice::Auto => write!(f, "auto"),
            GemmChoice::Native => write!(f, "native"),
            GemmChoice::Blas(None) => write!(f, "blas"),
            GemmChoice::Blas(Some(p)) => write!(f, "blas={}", p.display()),
        }
    }
}

/// The `--gemm` option, shared by `train`, `bench`, `eval`, `grad` and `generate`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GemmArgs {
    /// GEMM library: auto (Accelerate on macOS; elsewhere the faster of native and the system
    /// BLAS, measured once per machine and model shape and cached), native (the gemm crate),
    /// blas (OpenBLAS, BLIS or MKL, found at run time) or blas=PATH.
    #[arg(long, default_value = "auto", value_name = "auto|native|blas[=PATH]")]
    pub gemm: GemmChoice,
}

/// Steps whose GEMMs total fewer FLOPs than this are not calibrated (`auto` = native).
pub const CALIBRATE_MIN_FLOP: f64 = 2e9;

/// One GEMM of the training step, `count` times per forward+backward of one micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepGemm {
    pub what: &'static str,
    pub op_a: Op,
    pub op_b: Op,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub count: usize,
}

impl StepGemm {
    pub fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64 * self.count as f64
    }
}

/// The projection and classifier GEMMs of one forward+backward over `batch × seq` tokens
/// (attention's per-head products are timed separately, [`attention_ms`]): per weight
/// `W[out, in]` the forward `Y = W·X` (out, N, in), the input gradient `dX = Wᵀ·dY`
/// (in, N, out) and the weight gradient `dW = dY·Xᵀ` (out, in, N); the classifier
/// token-major as `ops::classifier_ce` runs it.
pub fn step_gemms(c: &Config, batch: usize, seq: usize) -> Vec<StepGemm> {
    let n = batch * seq;
    let (d, h, qd, kvd, v, l) = (
        c.dim,
        c.hidden_dim,
        c.q_dim(),
        c.kv_dim(),
        c.vocab_size,
        c.n_layers,
    );
    let mut out: Vec<StepGemm> = Vec::new();
    let mut add = |what, op_a, op_b, m, nn, k, count| {
        if let Some(g) = out
            .iter_mut()
            .find(|g| (g.op_a, g.op_b, g.m, g.n, g.k) == (op_a, op_b, m, nn, k))
        {
            g.count += count;
        } else {
            out.push(StepGemm {
                what,
                op_a,
                op_b,
                m,
                n: nn,
                k,
                count,
            });
        }
    };
    // (out, in, how many per layer)
    for (o, i, per) in [(qd, d, 1), (kvd, d, 2), (d, qd, 1), (h, d, 2), (d, h, 1)] {
        add("forward", Op::N, Op::N, o, n, i, per * l);
        add("input gradient", Op::T, Op::N, i, n, o, per * l);
        add("weight gradient", Op::N, Op::T, o, i, n, per * l);
    }
    add("classifier forward", Op::T, Op::T, n, v, d, 1);
    add("classifier dx", Op::T, Op::T, d, n, v, 1);
    add("classifier dW", Op::T, Op::T, v, d, n, 1);
    out
}

fn rand_buf(len: usize, seed: u64) -> Vec<f32> {
    let mut r = crate::util::rng::Rng::new(seed);
    (0..len).map(|_| r.next_f32() - 0.5).collect()
}

/// Milliseconds of one `g` (count 1) on engine `e`, split into `parts`, best of `reps` after
/// a warm-up call. Dimensions above `cap` are timed at `cap` and scaled (the classifier's
/// vocabulary: the time is linear in it).
fn time_gemm(g: &StepGemm, e: Engine, parts: usize, reps: usize, cap: usize) -> f64 {
    let (m, n, k) = (g.m.min(cap), g.n.min(cap), g.k.min(cap));
    let scale = (g.m * g.n * g.k) as f64 / (m * n * k) as f64;
    let (ar, ac) = if g.op_a == Op::N { (m, k) } else { (k, m) };
    let (br, bc) = if g.op_b == Op::N { (k, n) } else { (n, k) };
    let a = rand_buf(ar * ac, 1);
    let b = rand_buf(br * bc, 2);
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::INFINITY;
    for r in 0..=reps {
        let t = Instant::now();
        gemm::sgemm_parts_on(
            e, parts, g.op_a, g.op_b, m, n, k, 1.0, &a, ac, &b, bc, 0.0, &mut c, n,
        );
        if r > 0 {
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    best * scale
}

/// Milliseconds of `gemms` (each × its count) under selection `s`, as [`gemm::sgemm`] would
/// run them.
pub fn gemms_ms(gemms: &[StepGemm], s: Selection, reps: usize, cap: usize) -> f64 {
    let prev = gemm::selected();
    gemm::select(s);
    let parts = match s.threading {
        Threading::Split => gemm::threads(),
        Threading::Library => 1,
    };
    let ms = gemms
        .iter()
        .map(|g| g.count as f64 * time_gemm(g, s.engine, parts, reps, cap))
        .sum();
    gemm::select(prev);
    ms
}

/// Milliseconds of the attention GEMMs of one forward+backward (`n_layers` layers of
/// `batch × n_heads` heads, the causal tiles of `kernels::cpu`: scores, P·V; in the
/// backward the scores again, dP, dV, dQ, dK), heads spread over the rayon pool as the cpu
/// kernels spread them, on the selected engine.
pub fn attention_ms(c: &Config, batch: usize, seq: usize) -> f64 {
    use rayon::prelude::*;
    let tile = crate::kernels::cpu::TILE;
    let (hd, s) = (c.head_dim, seq);
    let tiles: Vec<(usize, usize)> = (0..s.div_ceil(tile))
        .map(|t| (t * tile, ((t + 1) * tile).min(s)))
        .collect();
    let heads = batch * c.n_heads;
    let workers = rayon::current_num_threads().clamp(1, heads.max(1));
    let q = rand_buf(hd * s, 3);
    let p = rand_buf(s * s, 4);
    let one_head = |out: &mut Vec<f32>| {
        let out = out.as_mut_ptr();
        // SAFETY: q is [hd, s] (row stride s), p [s, s], out [max(hd, s), s]; every product below stays
        // inside them (tile bounds ≤ s), and out belongs to this worker.
        unsafe {
            for &(r0, r1) in &tiles {
                // scores rows r0..r1 over keys 0..r1 (forward, and again in the backward), dP
                for _ in 0..3 {
                    gemm::sgemm_raw(
                        r1 - r0,
                        r1,
                        hd,
                        1.0,
                        q.as_ptr().add(r0),
                        1,
                        s as isize,
                        q.as_ptr(),
                        s as isize,
                        1,
                        0.0,
                        out.add(r0 * s),
                        s as isize,
                    );
                }
                // P·V and dQ: (hd, tile, r1)
                for _ in 0..2 {
                    gemm::sgemm_raw(
                        hd,
                        r1 - r0,
                        r1,
                        1.0,
                        q.as_ptr(),
                        s as isize,
                        1,
                        p.as_ptr().add(r0 * s),
                        1,
                        s as isize,
                        0.0,
                        out.add(r0),
                        s as isize,
                    );
                }
                // dV and dK per key tile: (hd, tile, s − c0)
                for _ in 0..2 {
                    gemm::sgemm_raw(
                        hd,
                        r1 - r0,
                        s - r0,
                        1.0,
                        q.as_ptr().add(r0),
                        s as isize,
                        1,
                        p.as_ptr().add(r0 * s + r0),
                        s as isize,
                        1,
                        0.0,
                        out.add(r0),
                        s as isize,
                    );
                }
            }
        }
    };
    let run = || {
        (0..workers).into_par_iter().for_each(|w| {
            let mut out = vec![0.0f32; hd.max(s) * s];
            for _ in (w..heads).step_by(workers) {
                one_head(&mut out);
            }
        })
    };
    run();
    let t = Instant::now();
    run();
    t.elapsed().as_secs_f64() * 1e3 * c.n_layers as f64
}

/// The GEMM ceiling of one optimizer step: the step's GEMMs alone (projections, classifier,
/// attention; × `accum`) on the selected engine and threads, in milliseconds.
pub fn ceiling_ms(c: &Config, batch: usize, seq: usize, accum: usize) -> f64 {
    let g = step_gemms(c, batch, seq);
    let proj = gemms_ms(&g, gemm::selected(), 2, usize::MAX);
    (proj + attention_ms(c, batch, seq)) * accum as f64
}

/// The cache file of `auto`'s verdicts.
pub fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("anetrain").join("gemm.json"))
}

/// The CPU model as /proc/cpuinfo names it (empty where unknown).
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn read_cache(path: &Path) -> serde_json::Map<String, serde_json::Value> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// Writes the cache atomically (temporary file, rename); failures only cost a recalibration.
fn write_cache(path: &Path, map: &serde_json::Map<String, serde_json::Value>) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(&serde_json::Value::Object(map.clone()));
    if let Ok(body) = body {
        if std::fs::write(&tmp, body).is_ok() && std::fs::rename(&tmp, path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// What [`apply`] chose and why, for run headers and bench output.
#[derive(Clone, Debug)]
pub struct Chosen {
    /// `native`, `blas` or `blas-threads`.
    pub label: &'static str,
    /// The selection's one-line description.
    pub describe: String,
    /// How it was decided: "asked for", "cached calibration …", "calibrated …", ….
    pub how: String,
}

impl Chosen {
    pub fn line(&self) -> String {
        format!("gemm: {} — {}", self.describe, self.how)
    }
}

/// Selects the GEMM engine of this process for `choice` (call after
/// [`super::backend::set_threads`]); `c`, `batch`, `seq` give the step's shapes for `auto`.
/// `--gemm blas` with no loadable library is an error naming everything tried.
pub fn apply(choice: &GemmChoice, c: &Config, batch: usize, seq: usize) -> Result<Chosen> {
    let chosen = |s: Selection, how: String| {
        gemm::select(s);
        Chosen {
            label: s.label(),
            describe: s.describe(),
            how,
        }
    };
    let blas_split = |b: &'static Blas| Selection {
        engine: Engine::Blas(b),
        threading: Threading::Split,
    };
    match choice {
        GemmChoice::Native => Ok(chosen(Selection::NATIVE, "asked for".into())),
        GemmChoice::Blas(path) => {
            let b: &'static Blas = match path {
                None => Blas::system().map_err(|why| {
                    anyhow::anyhow!("--gemm blas: unavailable: no BLAS library loads ({why}); install one (Debian: apt-get install libopenblas0-pthread) or give --gemm blas=PATH")
                })?,
                Some(p) => match Blas::find(Some(p)) {
                    Ok(b) => Box::leak(Box::new(b)),
                    Err(why) => bail!("--gemm {choice}: unavailable: {why}"),
                },
            };
            Ok(chosen(blas_split(b), "asked for".into()))
        }
        GemmChoice::Auto => {
            let gemms = step_gemms(c, batch, seq);
            let flop: f64 = gemms.iter().map(StepGemm::flops).sum();
            if flop < CALIBRATE_MIN_FLOP && !cfg!(target_os = "macos") {
                return Ok(chosen(
                    Selection::NATIVE,
                    format!(
                        "auto: native, the step's GEMMs ({:.2} GFLOP) are too small to calibrate",
                        flop / 1e9
                    ),
                ));
            }
            let b = match Blas::system() {
                Ok(b) => b,
                Err(why) => {
                    return Ok(chosen(
                        Selection::NATIVE,
                        format!("auto: no BLAS library loads ({why})"),
                    ))
                }
            };
            if cfg!(target_os = "macos") {
                return Ok(chosen(blas_split(b), "auto: Accelerate on macOS".into()));
            }
            let mut candidates = vec![Selection::NATIVE, blas_split(b)];
            if b.has_thread_control() && gemm::threads() > 1 {
                candidates.push(Selection {
                    engine: Engine::Blas(b),
                    threading: Threading::Library,
                });
            }
            let shapes: Vec<String> = gemms
                .iter()
                .map(|g| {
                    format!(
                        "{:?}{:?}{}x{}x{}*{}",
                        g.op_a, g.op_b, g.m, g.n, g.k, g.count
                    )
                })
                .collect();
            let key = format!(
                "{} | {} threads | {} | {}",
                cpu_model(),
                gemm::threads(),
                b.about,
                shapes.join(",")
            );
            let path = cache_path();
            let mut cache = path.as_deref().map(read_cache).unwrap_or_default();
            if let Some(label) = cache
                .get(&key)
                .and_then(|v| v.get("choice"))
                .and_then(|v| v.as_str())
            {
                if let Some(s) = candidates.iter().find(|s| s.label() == label) {
                    return Ok(chosen(
                        *s,
                        format!(
                            "auto: cached calibration ({})",
                            path.as_deref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
            let t = Instant::now();
            let ms: Vec<f64> = candidates
                .iter()
                .map(|s| gemms_ms(&gemms, *s, 1, 2048))
                .collect();
            let best = (0..ms.len())
                .min_by(|&i, &j| ms[i].total_cmp(&ms[j]))
                .unwrap_or(0);
            let figures: Vec<String> = candidates
                .iter()
                .zip(&ms)
                .map(|(s, m)| format!("{} {m:.1} ms", s.label()))
                .collect();
            let how = format!(
                "auto: calibrated on the step's {:.1} GFLOP of projection and classifier GEMMs ({}; {:.0} ms)",
                flop / 1e9,
                figures.join(", "),
                t.elapsed().as_secs_f64() * 1e3
            );
            let entry = serde_json::json!({
                "choice": candidates[best].label(),
                "ms": candidates.iter().zip(&ms).map(|(s, m)| (s.label().to_string(), serde_json::json!(m))).collect::<serde_json::Map<_, _>>(),
            });
            cache.insert(key, entry);
            if let Some(p) = &path {
                write_cache(p, &cache);
            }
            Ok(chosen(candidates[best], how))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses_and_prints() {
        for s in ["auto", "native", "blas", "blas=/opt/lib/libopenblas.so"] {
            let c: GemmChoice = s.parse().unwrap();
            assert_eq!(c.to_string(), s);
        }
        assert!("blas=".parse::<GemmChoice>().is_err());
        let e = "openblas".parse::<GemmChoice>().unwrap_err();
        assert!(e.contains("auto, native, blas"), "{e}");
    }

    #[test]
    fn step_gemms_count_the_step_flops() {
        // Against StepFlops' independent formula: 3 linear passes + the classifier.
        let c = Config::preset("stories110m").unwrap();
        let f = crate::model::StepFlops::new(&c, 1, 256);
        let total: f64 = step_gemms(&c, 1, 256).iter().map(StepGemm::flops).sum();
        let want = f.forward + f.backward_dx + f.backward_dw + f.classifier;
        assert!((total - want).abs() < 1e-6 * want, "{total} vs {want}");
    }

    #[test]
    fn blas_path_that_does_not_load_is_an_error_naming_it() {
        let c = Config::preset("stories260k").unwrap();
        let e = apply(
            &GemmChoice::Blas(Some("/nonexistent/libfoo.so".into())),
            &c,
            1,
            8,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unavailable") && e.contains("libfoo"), "{e}");
        assert_eq!(gemm::selected().label(), "native");
    }

    #[test]
    #[cfg(not(target_os = "macos"))]
    fn auto_on_a_tiny_step_is_native_without_timing() {
        let c = Config::preset("stories260k").unwrap();
        let got = apply(&GemmChoice::Auto, &c, 1, 8).unwrap();
        assert_eq!(got.label, "native");
        assert!(got.how.contains("too small"), "{}", got.how);
    }
}
