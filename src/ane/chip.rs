//! Chip profiles: what each Neural Engine generation has been seen to accept, as named
//! rules. Every number about the hardware that the planner ([`crate::ane::fit`]), the
//! generators and the strict checker ([`crate::ane::check`]) use lives here.
//!
//! Each field cites the public report it comes from by its rule number in
//! `docs/ANE_HARDWARE.md` (C1–C24, with the sources). Where reports disagree, the named chip
//! takes what was measured on it and [`Profile::conservative`] takes the side that no report
//! contradicts; `conservative` is used when the chip is unknown and by default in tests.

use anyhow::{bail, Result};

/// How RoPE is written in MIL (docs/ANE_HARDWARE.md C3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RopeForm {
    /// `t·cos + (t·P)·sin` with `P` a constant `[HD, HD]` ±1 permutation matrix: the form
    /// reported working on M3 Ultra, with no axis longer than the head dim.
    Permutation,
    /// The reference's `reshape [.., S·HD/2, 2]` → slice → `concat(axis 3)`: ran on M4/M5,
    /// reported rejected on M3 Ultra; its middle axis is `S·HD/2` long.
    PairsConcat,
}

/// The MIL text dialect (docs/ANE_HARDWARE.md C9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    /// `program(1.3)`, `main<ios18>`, shorthand literals (`string("x")`): the reference's, run on
    /// M3/M4/M5, "partial" on M1.
    Ios18,
    /// `program(1.0)`, `main<ios16>`, typed literals (`tensor<string, []>("x")`): what CoreML
    /// itself emits; the form reported to compile on M1/M2.
    Ios16,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Ios18 => "ios18",
            Dialect::Ios16 => "ios16",
        }
    }
}

/// The rules of one chip. Sizes are in fp16 elements unless the name says bytes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Profile {
    /// `m1`, `m2`, …, `m3-ultra`, `conservative`.
    pub name: String,
    /// C1: every spatial / contraction axis (all but the channel axis of a `[1, C, 1, W]`
    /// tensor, and every axis of the rank-4 intermediates) at most this long: 16 384 on
    /// M1–M3 (ANEForge `_targets.py`; rustane #13: 17 920 fails on M3 Ultra), 65 536 on M4/M5.
    pub max_axis: usize,
    /// C1: the channel axis of a `[1, C, 1, W]` tensor at most this long (the reference ran a
    /// 32 000-channel classifier; ANEForge gives 65 536).
    pub max_channels: usize,
    /// C2: a W-axis slice at a nonzero offset saturates |x| > 4094 to ±inf (ANEForge
    /// `predict_fp16_divergence`, bit-exact on M1 and M2; clean on M5, M3 unknown).
    pub w_slice_saturates: bool,
    /// C3: the RoPE form (rustane PR #9: the pairs form is rejected on M3 Ultra).
    pub rope: RopeForm,
    /// C8: `softmax` lengths must be powers of two (Espresso, M3 Max: 257 fails, 256 works).
    pub softmax_pow2: bool,
    /// C7: the narrowest surface width (Espresso, M3 Max: width < 32 gives error 0x9).
    pub min_width: usize,
    /// C7/C24: surface widths a multiple of this (rustane M4 Max: widths not a multiple of 16
    /// corrupt; the reference's rows are 64-byte multiples; M5: 128-byte rows, maderix PR #35).
    pub width_multiple: usize,
    /// C7: surface channel counts a multiple of this (Espresso: compile failures until every
    /// dim was a multiple of 64; the reference's "64+ channel kernels", its commit 184b182).
    pub channel_multiple: usize,
    /// C7: the smallest surface in bytes (Orion, M4 Max: evaluation fails below ≈48 KB).
    pub min_surface_bytes: usize,
    /// C18: the largest surface in bytes (the reference's largest ran at 16.4 MB; on-chip SRAM
    /// is ≈24–32 MB, dev-erik's probe; programs beyond it failed to compile, Orion).
    pub max_surface_bytes: usize,
    /// C9: the MIL dialect the chip is reported to compile.
    pub dialect: Dialect,
    /// C14: compiles a process plans for (≈119 is where compiles start failing; the reference
    /// plans 100).
    pub compile_budget: u64,
    /// C19: dual-die (Ultra) chips lose throughput after about this many evaluations of one
    /// loaded program; recompiling restores it (rustane PR #9/#12, M3 Ultra).
    pub throughput_decay_evals: Option<u64>,
    /// C25: programs compile on a second thread while others evaluate (dev-erik/ANE's
    /// double-buffered compiles, M4 Max); not reported on other chips, so off there (the
    /// static pipeline then compiles on the critical path, as the reference does).
    pub background_compile: bool,
}

/// C14: about this many in-memory compiles into a process, the compiler starts failing (it
/// leaks resources); profiles plan [`Profile::compile_budget`] = 100 below it. The lenient
/// simulator and a bare private device default to this limit.
pub const COMPILE_LIMIT: u64 = 119;

/// C2: the magnitude above which a nonzero-offset W slice saturates on M1/M2.
pub const W_SLICE_SATURATION: f32 = 4094.0;

/// The profile names `--ane-profile` accepts.
pub const NAMES: &[&str] = &[
    "conservative",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m1-ultra",
    "m2-ultra",
    "m3-ultra",
];

const KB: usize = 1024;
const MB: usize = 1024 * 1024;

impl Profile {
    /// The intersection that no report contradicts: used for unknown chips and in tests.
    pub fn conservative() -> Profile {
        Profile {
            name: "conservative".into(),
            max_axis: 16384,
            max_channels: 65536,
            w_slice_saturates: true,
            rope: RopeForm::Permutation,
            softmax_pow2: true,
            min_width: 32,
            width_multiple: 64,
            channel_multiple: 64,
            min_surface_bytes: 48 * KB,
            max_surface_bytes: 16 * MB,
            dialect: Dialect::Ios16,
            compile_budget: 100,
            throughput_decay_evals: None,
            background_compile: false,
        }
    }

    /// A profile by name (`m1` … `m5`, `m1-ultra` … `m3-ultra`, `conservative`),
    /// case-insensitively, optionally followed by overrides of single rules:
    /// `m4,dialect=ios16,rope=permutation,max-surface-mb=8` (the form `anetrain ane check`
    /// prints when an alternative worked).
    pub fn named(spec: &str) -> Result<Profile> {
        let mut parts = spec.split(',');
        let mut p = Profile::base(parts.next().unwrap_or(""))?;
        for m in parts {
            let Some((k, v)) = m.split_once('=') else {
                bail!("profile override {m:?} in {spec:?}: expected KEY=VALUE");
            };
            p.set(k.trim(), v.trim())
                .map_err(|e| anyhow::anyhow!("profile {spec:?}: {e}"))?;
            p.name = format!("{},{}={}", p.name, k.trim(), v.trim());
        }
        Ok(p)
    }

    /// Overrides one rule: `dialect` (ios16, ios18), `rope` (permutation, pairs),
    /// `max-surface-mb`, `max-axis`, `budget`, `background-compile` (on, off).
    pub fn set(&mut self, key: &str, val: &str) -> Result<()> {
        let num = || -> Result<usize> {
            val.parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| anyhow::anyhow!("{key}={val}: expected a positive integer"))
        };
        match key {
            "dialect" => {
                self.dialect = match val {
                    "ios16" => Dialect::Ios16,
                    "ios18" => Dialect::Ios18,
                    _ => bail!("dialect={val}: expected ios16 or ios18"),
                }
            }
            "rope" => {
                self.rope = match val {
                    "permutation" => RopeForm::Permutation,
                    "pairs" => RopeForm::PairsConcat,
                    _ => bail!("rope={val}: expected permutation or pairs"),
                }
            }
            "max-surface-mb" => self.max_surface_bytes = num()? * MB,
            "max-axis" => self.max_axis = num()?,
            "budget" => self.compile_budget = num()? as u64,
            "background-compile" => {
                self.background_compile = match val {
                    "on" => true,
                    "off" => false,
                    _ => bail!("background-compile={val}: expected on or off"),
                }
            }
            _ => bail!(
                "unknown profile override {key:?}: expected dialect, rope, max-surface-mb, \
                 max-axis, budget or background-compile"
            ),
        }
        Ok(())
    }

    fn base(name: &str) -> Result<Profile> {
        let n = name.trim().to_ascii_lowercase();
        let (gen, ultra) = match n.strip_suffix("-ultra") {
            Some(g) => (g, true),
            None => (n.as_str(), false),
        };
        let mut p = Profile::conservative();
        match gen {
            "conservative" if !ultra => return Ok(p),
            "m1" | "m2" => {
                // C2 measured on both; C9 typed literals needed; C1 16 384.
                p.w_slice_saturates = true;
                p.dialect = Dialect::Ios16;
                p.width_multiple = 32;
            }
            "m3" => {
                // C2 not measured on M3: keep the conservative answer (saturates).
                p.dialect = Dialect::Ios18;
                p.width_multiple = 32;
            }
            "m4" | "m5" => {
                p.max_axis = 65536;
                // C18: the reference's dynamic Qwen3-0.6B `ffnFused` input (19.9 MB) ran on M4.
                p.max_surface_bytes = 20 * MB;
                p.w_slice_saturates = false;
                p.rope = RopeForm::PairsConcat;
                p.dialect = Dialect::Ios18;
                // C24: 128-byte rows on M5.
                p.width_multiple = if gen == "m5" { 64 } else { 32 };
                // C25: double-buffered compiles ran on an M4 Max.
                p.background_compile = gen == "m4";
            }
            _ => bail!(
                "unknown Neural Engine profile {name:?}; known: {}",
                NAMES.join(", ")
            ),
        }
        if ultra {
            if gen != "m1" && gen != "m2" && gen != "m3" {
                bail!(
                    "unknown Neural Engine profile {name:?}; known: {}",
                    NAMES.join(", ")
                );
            }
            // C3 was measured rejected on M3 Ultra; C19 on dual-die chips.
            p.rope = RopeForm::Permutation;
            p.throughput_decay_evals = Some(100_000);
        }
        p.name = n;
        Ok(p)
    }

    /// The profile for a chip name as `sysctl machdep.cpu.brand_string` prints it
    /// (`Apple M3 Max`, `Apple M2 Ultra`); `conservative` when it is not recognised.
    pub fn for_brand(brand: &str) -> Profile {
        let b = brand.to_ascii_lowercase();
        let gen = ["m1", "m2", "m3", "m4", "m5"].into_iter().find(|g| {
            b.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|w| w == *g)
        });
        match gen {
            Some(g) => {
                let name = if b.contains("ultra") {
                    format!("{g}-ultra")
                } else {
                    g.to_string()
                };
                Profile::named(&name)
                    .or_else(|_| Profile::named(g))
                    .unwrap_or_else(|_| Profile::conservative())
            }
            None => Profile::conservative(),
        }
    }

    /// The profile to use: `--ane-profile` if given, else the chip this process runs on
    /// (macOS), else `conservative`.
    pub fn select(requested: Option<&str>) -> Result<Profile> {
        match requested {
            Some(n) => Profile::named(n),
            None => Ok(match brand_string() {
                Some(b) => Profile::for_brand(&b),
                None => Profile::conservative(),
            }),
        }
    }

    /// Every profile, for tests and `anetrain ane` reports.
    pub fn all() -> Vec<Profile> {
        NAMES
            .iter()
            .map(|n| Profile::named(n).expect("listed profile"))
            .collect()
    }
}

/// The CPU brand string (`sysctl -n machdep.cpu.brand_string`) on macOS; `None` elsewhere or
/// when it cannot be read.
pub fn brand_string() -> Option<String> {
    if !cfg!(target_os = "macos") {
        return None;
    }
    let out = std::process::Command::new("sysctl")
        .args(["-n", "machdep.cpu.brand_string"])
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brand_strings_map_to_profiles() {
        assert_eq!(Profile::for_brand("Apple M1 Pro").name, "m1");
        assert_eq!(Profile::for_brand("Apple M3 Ultra").name, "m3-ultra");
        assert_eq!(Profile::for_brand("Apple M4 Max").name, "m4");
        assert_eq!(Profile::for_brand("Apple M5").name, "m5");
        assert_eq!(Profile::for_brand("Apple M9").name, "conservative");
        assert_eq!(
            Profile::for_brand("Intel(R) Core(TM) i7").name,
            "conservative"
        );
        // An Ultra of a generation without an Ultra rule set falls back to the plain chip.
        assert_eq!(Profile::for_brand("Apple M4 Ultra").name, "m4");
    }

    #[test]
    fn conservative_is_the_intersection() {
        let c = Profile::conservative();
        for p in Profile::all() {
            assert!(c.max_axis <= p.max_axis, "{}", p.name);
            assert!(c.max_channels <= p.max_channels, "{}", p.name);
            assert!(c.min_width >= p.min_width, "{}", p.name);
            assert_eq!(c.width_multiple % p.width_multiple, 0, "{}", p.name);
            assert_eq!(c.channel_multiple % p.channel_multiple, 0, "{}", p.name);
            assert!(c.min_surface_bytes >= p.min_surface_bytes, "{}", p.name);
            assert!(c.max_surface_bytes <= p.max_surface_bytes, "{}", p.name);
            assert!(c.compile_budget <= p.compile_budget, "{}", p.name);
            assert!(c.w_slice_saturates || !p.w_slice_saturates, "{}", p.name);
            assert!(c.softmax_pow2 || !p.softmax_pow2, "{}", p.name);
        }
        assert!(Profile::named("m7").is_err());
        let o = Profile::named("m4,dialect=ios16,max-surface-mb=8").unwrap();
        assert_eq!((o.dialect, o.max_surface_bytes), (Dialect::Ios16, 8 << 20));
        assert_eq!(o.name, "m4,dialect=ios16,max-surface-mb=8");
        assert!(Profile::named("m4,rope=spiral").is_err());
        assert!(Profile::named("m4,colour=red").is_err());
        assert!(Profile::named("m4-ultra").is_err());
        assert_eq!(Profile::named("M2").unwrap().max_axis, 16384);
        assert_eq!(Profile::named("m4").unwrap().max_axis, 65536);
        assert!(Profile::named("m4").unwrap().background_compile);
        assert!(!Profile::named("m3").unwrap().background_compile);
        assert!(
            Profile::named("m3,background-compile=on")
                .unwrap()
                .background_compile
        );
        assert!(Profile::named("m3,background-compile=maybe").is_err());
    }
}
