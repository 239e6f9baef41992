//! Wall-clock accounting per component of a training step, for the step log, the progress
//! line and the efficiency report.

use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What a slice of step time was spent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    FwdAttn,
    FwdFfn,
    FfnBwd,
    SdpaBwd1,
    SdpaBwd2,
    QkvBwd,
    Embedding,
    Rmsnorm,
    Rope,
    Classifier,
    CrossEntropy,
    Dw,
    Optimizer,
    Data,
    /// Neural Engine program compilation.
    Compile,
    /// Surface packing and fp32↔fp16 conversion.
    SurfaceIo,
    Other,
}

impl Component {
    pub const ALL: [Component; 17] = [
        Component::FwdAttn,
        Component::FwdFfn,
        Component::FfnBwd,
        Component::SdpaBwd1,
        Component::SdpaBwd2,
        Component::QkvBwd,
        Component::Embedding,
        Component::Rmsnorm,
        Component::Rope,
        Component::Classifier,
        Component::CrossEntropy,
        Component::Dw,
        Component::Optimizer,
        Component::Data,
        Component::Compile,
        Component::SurfaceIo,
        Component::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::FwdAttn => "fwd_attn",
            Component::FwdFfn => "fwd_ffn",
            Component::FfnBwd => "ffn_bwd",
            Component::SdpaBwd1 => "sdpa_bwd1",
            Component::SdpaBwd2 => "sdpa_bwd2",
            Component::QkvBwd => "qkv_bwd",
            Component::Embedding => "embedding",
            Component::Rmsnorm => "rmsnorm",
            Component::Rope => "rope",
            Component::Classifier => "classifier",
            Component::CrossEntropy => "cross_entropy",
            Component::Dw => "dw",
            Component::Optimizer => "optimizer",
            Component::Data => "data",
            Component::Compile => "compile",
            Component::SurfaceIo => "surface_io",
            Component::Other => "other",
        }
    }
}

/// Milliseconds per component.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    ms: [f64; 17],
}

impl Timings {
    pub fn add(&mut self, c: Component, ms: f64) {
        self.ms[c as usize] += ms;
    }
    pub fn get(&self, c: Component) -> f64 {
        self.ms[c as usize]
    }
    pub fn total(&self) -> f64 {
        self.ms.iter().sum()
    }
    pub fn merge(&mut self, o: &Timings) {
        for (a, b) in self.ms.iter_mut().zip(o.ms.iter()) {
            *a += b;
        }
    }
    pub fn clear(&mut self) {
        self.ms = [0.0; 17];
    }
    /// Runs `f` and charges its duration to `c`.
    pub fn time<R>(&mut self, c: Component, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        self.add(c, t.elapsed().as_secs_f64() * 1e3);
        r
    }
    /// Non-zero components as (name, ms), in a fixed order.
    pub fn entries(&self) -> Vec<(&'static str, f64)> {
        Component::ALL
            .iter()
            .filter(|c| self.get(**c) > 0.0)
            .map(|c| (c.name(), self.get(*c)))
            .collect()
    }
    pub fn to_map(&self) -> std::collections::BTreeMap<String, f64> {
        self.entries()
            .into_iter()
            .map(|(k, v)| (k.to_string(), (v * 1000.0).round() / 1000.0))
            .collect()
    }
    /// The values as a flat array (for checkpoints), in `Component::ALL` order.
    pub fn as_array(&self) -> [f64; 17] {
        self.ms
    }
    pub fn from_array(ms: [f64; 17]) -> Timings {
        Timings { ms }
    }
}
