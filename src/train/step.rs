//! The model-level training step: forward and backward of the whole network over the kernel
//! contract ([`crate::kernels::Kernels`]), with every activation, tap and scratch buffer
//! allocated once in a [`Workspace`].
//!
//! Data flow (activations `[C, N]`, N = B·S token columns; see src/kernels/mod.rs):
//! ```text
//! tokens ─► embedding ─► x₀
//! layer l: x_l ─► fwd_attn ─► o ; x2_l = x_l + o ─► fwd_ffn ─► f ; x_{l+1} = x2_l + f
//! x_L ─► RMSNorm ─► xf ─► classifier + softmax-CE (token chunks) ─► loss, dxf, dW_cls
//! backward, l = L−1 … 0, the input-gradient chain of layer l
//!     dy ─► ffn_bwd ─► dh1, dh3, dx2n ; dx2 = dy + rmsnorm_bwd(dx2n)
//!        ─► sdpa_bwd1 ─► dv, dP ─► sdpa_bwd2 ─► dq, dk ─► RoPE bwd
//!        ─► [Qwen3: per-head q/k norm bwd on Wq·xn, Wk·xn recomputed ─► dq_norm, dk_norm]
//!        ─► qkv_bwd ─► dxn ─► dx = dx2 + rmsnorm_bwd(dxn)
//! runs beside the weight gradients of layer l+1 (dW = dY·Xᵀ: W2 from dy·gateᵀ, W1/W3 from
//! dh1/dh3·x2nᵀ, Wo from dx2·attnᵀ, Wq/Wk/Wv from dq/dk/dv·xnᵀ).
//! ```
//! Two cores, few barriers: the backward pass is one `rayon::join` per layer, the chain on
//! one side and the previous layer's dW GEMMs on the other. The per-layer gradients the dW
//! side reads (dy, dx2, dh1, dh3, dq, dk, dv) live in two sets used by alternate layers, so
//! the chain of layer l never overwrites what the dW GEMMs of layer l+1 are reading. Inside
//! each side, GEMMs split in two and rayon's work stealing lets an idle core take half of
//! the other side's current product. The forward pass and the classifier split each
//! product over both cores.
//!
//! The backend must be built for the workspace's [`Spec`] (same model, batch, seq): the step
//! refuses another one with an error naming both. Kernel calls go through
//! [`crate::kernels::Checked`], which checks every slice against that spec.
//!
//! The step runs inside its own rayon pool (one thread per core unless
//! [`Workspace::set_threads`] says otherwise): kernel methods are called from a worker thread
//! of that pool, always from the side of the join that runs the chain.
//!
//! Timings: each kernel and op is charged its wall time; the dW work that overlaps the
//! chain is free, and only the time the dW side ran past the chain is charged to
//! [`Component::Dw`], so the components add up to the step's wall time. A backend that
//! keeps a copy of the weights rebuilds it inside the first call of each kernel under a new
//! weights version, so that compile or staging time is charged to the kernel.

use crate::kernels::gemm::{sgemm_serial, Op};
use crate::kernels::ops::{self, ClassifierGrads, Rope};
use crate::kernels::{
    AttnFwd, AttnWeights, Checked, Dims, FfnBwd, FfnFwd, FfnWeights, Kernels, LayerViews, Pass,
    SdpaBwd1, SdpaBwd2, Spec,
};
use crate::model::{Config, LayerTensor, Layout, Params};
use crate::train::timing::{Component, Timings};
use anyhow::{bail, ensure, Context, Result};
use std::sync::Arc;
use std::time::Instant;

/// Gradients of one layer's activations that its weight gradients need. Two sets serve
/// alternate layers (see the module docs).
struct LayerGrads {
    /// dL/d(layer output) `[D, N]` (the residual-stream gradient entering the layer)
    dy: Vec<f32>,
    /// dL/dx2 `[D, N]` (residual gradient after the FFN block)
    dx2: Vec<f32>,
    /// `[H, N]`
    dh1: Vec<f32>,
    /// `[H, N]`
    dh3: Vec<f32>,
    /// dq `[QD, N]` after the RoPE backward (and, with q/k norms, the norm backward)
    dq: Vec<f32>,
    /// `[KVD, N]`
    dk: Vec<f32>,
    /// `[KVD, N]`
    dv: Vec<f32>,
}

impl LayerGrads {
    fn new(d: &Dims) -> LayerGrads {
        let n = d.n();
        LayerGrads {
            dy: vec![0.0; d.dim * n],
            dx2: vec![0.0; d.dim * n],
            dh1: vec![0.0; d.hidden * n],
            dh3: vec![0.0; d.hidden * n],
            dq: vec![0.0; d.q_dim() * n],
            dk: vec![0.0; d.kv_dim() * n],
            dv: vec![0.0; d.kv_dim() * n],
        }
    }
}

/// Forward taps for all layers, each `[L, C, N]` (x is `[L+1, D, N]`: x_L is the input of
/// the final norm).
struct Taps {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    x2: Vec<f32>,
    x2n: Vec<f32>,
    h1: Vec<f32>,
    h3: Vec<f32>,
    gate: Vec<f32>,
}

/// Layer `l`'s block of a stacked `[L, len]` buffer.
fn at(v: &[f32], l: usize, len: usize) -> &[f32] {
    &v[l * len..(l + 1) * len]
}
fn at_mut(v: &mut [f32], l: usize, len: usize) -> &mut [f32] {
    &mut v[l * len..(l + 1) * len]
}

/// Everything one training step needs besides parameters and gradients, allocated once for
/// a (config, batch, seq) geometry.
pub struct Workspace {
    cfg: Config,
    /// The geometry every kernel call has (the backend must be built for the same).
    spec: Spec,
    weights_version: u64,
    pool: Arc<rayon::ThreadPool>,
    taps: Taps,
    /// fwd_attn output `[D, N]`
    o: Vec<f32>,
    /// fwd_ffn output `[D, N]`
    f: Vec<f32>,
    /// final RMSNorm output `[D, N]`
    xf: Vec<f32>,
    /// dL/dxf `[D, N]`
    dxf: Vec<f32>,
    /// classifier chunk `[chunk, V]`
    logits: Vec<f32>,
    chunk: usize,
    sets: [LayerGrads; 2],
    /// the chain's output dL/dx_l `[D, N]`, swapped into the next set's dy
    dres: Vec<f32>,
    /// `[D, N]`
    dx2n: Vec<f32>,
    /// `[D, N]`
    dxn: Vec<f32>,
    /// `[B, NH, S, S]`
    probs: Vec<f32>,
    /// `[B, NH, S, S]`
    dp: Vec<f32>,
    /// RMSNorm scratch `[2N]`
    norm_scratch: Vec<f32>,
    /// Qwen3's per-head q/k norms (empty without them): the pre-norm q `[QD, N]` and k
    /// `[KVD, N]`, recomputed as Wq·xn, Wk·xn in the backward, and the gradients w.r.t. them.
    qk: QkNormBufs,
}

/// Buffers of the q/k norm backward (all empty for a model without q/k norms).
struct QkNormBufs {
    q: Vec<f32>,
    k: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
}

/// The gradient arena cut into its tensors (stacked over layers), so that the chain and the
/// dW GEMMs can hold disjoint mutable parts at once. The untied classifier, last in the
/// arena, is reached separately (its gradient is complete before the layers start).
struct GradParts<'a> {
    emb: &'a mut [f32],
    att_norm: &'a mut [f32],
    wq: &'a mut [f32],
    wk: &'a mut [f32],
    wv: &'a mut [f32],
    wo: &'a mut [f32],
    ffn_norm: &'a mut [f32],
    w1: &'a mut [f32],
    w2: &'a mut [f32],
    w3: &'a mut [f32],
    norm: &'a mut [f32],
    /// the untied classifier (empty when tied)
    out: &'a mut [f32],
    /// Per-head q/k norm gains `[L, HD]` (empty without q/k norms).
    q_norm: &'a mut [f32],
    k_norm: &'a mut [f32],
}

fn split_grads<'a>(lay: &Layout, data: &'a mut [f32]) -> GradParts<'a> {
    use LayerTensor::*;
    let mut rest = data;
    let mut pos = 0;
    let mut take = |r: std::ops::Range<usize>| -> &'a mut [f32] {
        assert_eq!(r.start, pos, "parameter arena out of order");
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(r.len());
        rest = tail;
        pos = r.end;
        head
    };
    let emb = take(lay.tok_embeddings.clone());
    let att_norm = take(lay.stacked(AttentionNorm));
    let wq = take(lay.stacked(Wq));
    let wk = take(lay.stacked(Wk));
    let wv = take(lay.stacked(Wv));
    let wo = take(lay.stacked(Wo));
    let ffn_norm = take(lay.stacked(FfnNorm));
    let w1 = take(lay.stacked(W1));
    let w2 = take(lay.stacked(W2));
    let w3 = take(lay.stacked(W3));
    let norm = take(lay.norm.clone());
    let out: &'a mut [f32] = if lay.output != lay.tok_embeddings {
        take(lay.output.clone())
    } else {
        &mut []
    };
    let q_norm = take(lay.q_norm.clone());
    let k_norm = take(lay.k_norm.clone());
    assert!(rest.is_empty(), "parameter arena has unlisted tensors");
    GradParts {
        emb,
        att_norm,
        wq,
        wk,
        wv,
        wo,
        ffn_norm,
        w1,
        w2,
        w3,
        norm,
        out,
        q_norm,
        k_norm,
    }
}

/// Called during the backward pass each time a group of weight gradients is final (for this
/// call): the final norm with the untied classifier, then each layer from the last to the
/// first, then the embedding. Each call passes that group's pieces as (arena offset, values);
/// data-parallel training starts their reduction while the backward goes on.
pub type GradHook<'h> = &'h mut (dyn FnMut(&[(usize, &[f32])]) + Send);

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// The thread count of [`crate::kernels::gemm::set_threads`] when set, else the global
/// rayon pool's (one per core unless configured), so one setting governs both.
fn default_threads() -> usize {
    crate::kernels::gemm::threads()
}

fn build_pool(threads: usize) -> Arc<rayon::ThreadPool> {
    Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("anetrain-step-{i}"))
            .build()
            .expect("cannot start the training step's worker threads"),
    )
}

impl Workspace {
    /// Allocates every buffer for `batch` sequences of `seq` tokens (`seq` ≤ the config's
    /// `seq_len`, checked by the step). Threads: as set by `kernels::gemm::set_threads`, else
    /// the global rayon pool's size.
    pub fn new(cfg: &Config, batch: usize, seq: usize) -> Workspace {
        let spec = Spec::new(cfg, batch, seq);
        let d = spec.dims;
        let (n, l) = (d.n(), cfg.n_layers);
        let (dim, h, qd, kvd) = (d.dim, d.hidden, d.q_dim(), d.kv_dim());
        let z = |len: usize| vec![0.0f32; len];
        let chunk = ops::ce_chunk_tokens(cfg.vocab_size, n);
        Workspace {
            cfg: cfg.clone(),
            spec,
            weights_version: 0,
            pool: build_pool(default_threads()),
            taps: Taps {
                x: z((l + 1) * dim * n),
                xn: z(l * dim * n),
                q: z(l * qd * n),
                k: z(l * kvd * n),
                v: z(l * kvd * n),
                attn: z(l * qd * n),
                x2: z(l * dim * n),
                x2n: z(l * dim * n),
                h1: z(l * h * n),
                h3: z(l * h * n),
                gate: z(l * h * n),
            },
            o: z(dim * n),
            f: z(dim * n),
            xf: z(dim * n),
            dxf: z(dim * n),
            logits: z(chunk * cfg.vocab_size),
            chunk,
            sets: [LayerGrads::new(&d), LayerGrads::new(&d)],
            dres: z(dim * n),
            dx2n: z(dim * n),
            dxn: z(dim * n),
            probs: z(d.probs_len()),
            dp: z(d.probs_len()),
            norm_scratch: z(2 * n),
            qk: {
                let on = usize::from(cfg.qk_norm);
                QkNormBufs {
                    q: z(on * qd * n),
                    k: z(on * kvd * n),
                    dq: z(on * qd * n),
                    dk: z(on * kvd * n),
                }
            },
        }
    }

    /// The version passed to [`Kernels::prepare`]: bump it whenever the parameters change
    /// (after each optimizer update) so that backends that keep a copy of the weights
    /// rebuild it.
    pub fn set_weights_version(&mut self, v: u64) {
        self.weights_version = v;
    }

    /// Worker threads for the step (0: back to the default of [`Workspace::new`]).
    pub fn set_threads(&mut self, threads: usize) {
        self.pool = build_pool(if threads == 0 {
            default_threads()
        } else {
            threads
        });
    }

    /// Token columns per classifier chunk (default: a `[chunk, V]` logits buffer of about
    /// 32 MiB). Reallocates the chunk buffer when it grows.
    pub fn set_ce_chunk(&mut self, tokens: usize) {
        self.chunk = tokens.clamp(1, self.spec.dims.n());
        self.logits.resize(self.chunk * self.cfg.vocab_size, 0.0);
    }

    pub fn dims(&self) -> &Dims {
        &self.spec.dims
    }

    /// The geometry the backend of every call must be built for.
    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    /// inputs/targets: B·S ids, sequence b at b·S..(b+1)·S. Returns mean cross-entropy over
    /// B·S. ADDS grad_scale · d(mean loss)/dθ into `grads` (same layout as params) —
    /// accumulation-friendly.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward(
        &mut self,
        k: &mut dyn Kernels,
        params: &Params,
        grads: &mut Params,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        t: &mut Timings,
    ) -> Result<f32> {
        self.forward_backward_hooked(k, params, grads, inputs, targets, grad_scale, t, None)
    }

    /// [`Workspace::forward_backward`], calling `hook` as each group of gradients is final
    /// ([`GradHook`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_backward_hooked(
        &mut self,
        k: &mut dyn Kernels,
        params: &Params,
        grads: &mut Params,
        inputs: &[u32],
        targets: &[u32],
        grad_scale: f32,
        t: &mut Timings,
        mut hook: Option<GradHook>,
    ) -> Result<f32> {
        self.check(k, params, inputs, targets)?;
        ensure!(
            grads.layout.total == params.layout.total && grads.config() == params.config(),
            "gradient arena ({} values) does not match the parameters ({} values)",
            grads.layout.total,
            params.layout.total
        );
        let pool = self.pool.clone();
        pool.install(|| {
            self.forward(k, Pass::Training, params, inputs, t)?;
            let loss = self.classifier(params, Some(grads), targets, grad_scale, t);
            self.backward(k, params, grads, inputs, t, &mut hook)?;
            Ok(loss)
        })
    }

    /// Forward only (eval): mean loss.
    pub fn forward_loss(
        &mut self,
        k: &mut dyn Kernels,
        params: &Params,
        inputs: &[u32],
        targets: &[u32],
        t: &mut Timings,
    ) -> Result<f32> {
        self.check(k, params, inputs, targets)?;
        let pool = self.pool.clone();
        pool.install(|| {
            self.forward(k, Pass::Forward, params, inputs, t)?;
            Ok(self.classifier(params, None, targets, 0.0, t))
        })
    }

    fn check(
        &self,
        k: &dyn Kernels,
        params: &Params,
        inputs: &[u32],
        targets: &[u32],
    ) -> Result<()> {
        let c = params.config();
        ensure!(
            *c == self.cfg,
            "parameters are for a different model than this workspace ({c:?} vs {:?})",
            self.cfg
        );
        ensure!(
            self.spec.dims.seq <= c.seq_len,
            "sequence length {} exceeds the model's seq_len {}",
            self.spec.dims.seq,
            c.seq_len
        );
        let n = self.spec.dims.n();
        for (what, ids) in [("inputs", inputs), ("targets", targets)] {
            ensure!(
                ids.len() == n,
                "{what}: {} token ids, expected batch {} × seq {} = {n}",
                ids.len(),
                self.spec.dims.batch,
                self.spec.dims.seq
            );
            if let Some((i, &id)) = ids
                .iter()
                .enumerate()
                .find(|(_, &id)| id as usize >= c.vocab_size)
            {
                bail!(
                    "{what}: token id {id} at position {i} is outside the vocabulary of {}",
                    c.vocab_size
                );
            }
        }
        ensure!(
            *k.spec() == self.spec,
            "the {} backend was built for {}, but this step runs {}: build the backend for the \
             step's model, batch and seq",
            k.name(),
            k.spec().describe(),
            self.spec.describe()
        );
        Ok(())
    }

    /// Embedding, the layers and the final norm: fills every tap and `xf`.
    fn forward(
        &mut self,
        k: &mut dyn Kernels,
        pass: Pass,
        params: &Params,
        inputs: &[u32],
        t: &mut Timings,
    ) -> Result<()> {
        let d = self.spec.dims;
        let (n, dim, qd, kvd, h) = (d.n(), d.dim, d.q_dim(), d.kv_dim(), d.hidden);
        let (dn, qn, kvn, hn) = (dim * n, qd * n, kvd * n, h * n);
        let c = &self.cfg;
        let tp = Instant::now();
        k.prepare(self.weights_version, pass)
            .context("backend could not prepare the weights")?;
        let mut k = Checked::new(k);
        let views: Vec<LayerViews> = (0..c.n_layers)
            .map(|l| LayerViews {
                attn: AttnWeights::of(params, l),
                ffn: FfnWeights::of(params, l),
            })
            .collect();
        k.upcoming(&views)
            .context("backend could not take the weights ahead")?;
        t.add(Component::Other, ms_since(tp));
        let tm = &mut self.taps;
        t.time(Component::Embedding, || {
            ops::embedding_fwd(
                at_mut(&mut tm.x, 0, dn),
                params.tok_embeddings(),
                inputs,
                dim,
            )
        });
        for l in 0..c.n_layers {
            let ts = Instant::now();
            k.fwd_attn(
                l,
                at(&tm.x, l, dn),
                &AttnWeights::of(params, l),
                AttnFwd {
                    xn: at_mut(&mut tm.xn, l, dn),
                    q: at_mut(&mut tm.q, l, qn),
                    k: at_mut(&mut tm.k, l, kvn),
                    v: at_mut(&mut tm.v, l, kvn),
                    attn: at_mut(&mut tm.attn, l, qn),
                    o: &mut self.o,
                },
            )
            .with_context(|| format!("fwd_attn, layer {l}"))?;
            t.add(Component::FwdAttn, ms_since(ts));
            let ts = Instant::now();
            let x2 = at_mut(&mut tm.x2, l, dn);
            for ((y, &a), &b) in x2.iter_mut().zip(at(&tm.x, l, dn)).zip(&self.o) {
                *y = a + b;
            }
            t.add(Component::Other, ms_since(ts));
            let ts = Instant::now();
            k.fwd_ffn(
                l,
                at(&tm.x2, l, dn),
                &FfnWeights::of(params, l),
                FfnFwd {
                    x2n: at_mut(&mut tm.x2n, l, dn),
                    h1: at_mut(&mut tm.h1, l, hn),
                    h3: at_mut(&mut tm.h3, l, hn),
                    gate: at_mut(&mut tm.gate, l, hn),
                    f: &mut self.f,
                },
            )
            .with_context(|| format!("fwd_ffn, layer {l}"))?;
            t.add(Component::FwdFfn, ms_since(ts));
            let ts = Instant::now();
            let xnext = at_mut(&mut tm.x, l + 1, dn);
            for ((y, &a), &b) in xnext.iter_mut().zip(at(&tm.x2, l, dn)).zip(&self.f) {
                *y = a + b;
            }
            t.add(Component::Other, ms_since(ts));
        }
        let ts = Instant::now();
        let inv = &mut self.norm_scratch[..n];
        ops::rmsnorm_fwd(
            &mut self.xf,
            inv,
            at(&tm.x, c.n_layers, dn),
            params.norm(),
            c.norm_eps,
        );
        t.add(Component::Rmsnorm, ms_since(ts));
        Ok(())
    }

    /// Classifier and cross-entropy over `xf`; with `grads`, also dxf (into `self.dxf`) and
    /// the classifier's weight gradient. Returns the mean loss.
    fn classifier(
        &mut self,
        params: &Params,
        grads: Option<&mut Params>,
        targets: &[u32],
        grad_scale: f32,
        t: &mut Timings,
    ) -> f32 {
        let n = self.spec.dims.n();
        let mut times = [0.0; 3];
        let cg = grads.map(|g| {
            let range = g.layout.output.clone();
            ClassifierGrads {
                dxf: &mut self.dxf[..],
                dwcls: &mut g.data[range],
            }
        });
        let sum = ops::classifier_ce(
            &self.xf,
            params.output(),
            targets,
            self.spec.dims.dim,
            self.chunk,
            &mut self.logits,
            grad_scale / n as f32,
            cg,
            &mut times,
        );
        t.add(Component::Classifier, times[0]);
        t.add(Component::CrossEntropy, times[1]);
        t.add(Component::Dw, times[2]);
        (sum / n as f64) as f32
    }

    /// Final-norm backward, the layers in reverse (chain beside dW), the embedding.
    fn backward(
        &mut self,
        k: &mut dyn Kernels,
        params: &Params,
        grads: &mut Params,
        inputs: &[u32],
        t: &mut Timings,
        hook: &mut Option<GradHook>,
    ) -> Result<()> {
        let d = self.spec.dims;
        let c = self.cfg.clone();
        let nl = c.n_layers;
        let (n, dim) = (d.n(), d.dim);
        let dn = dim * n;
        let eps = c.norm_eps;
        let layout = grads.layout.clone();
        let g = split_grads(&layout, &mut grads.data);
        let GradParts {
            emb: g_emb,
            att_norm: g_att_norm,
            wq: g_wq,
            wk: g_wk,
            wv: g_wv,
            wo: g_wo,
            ffn_norm: g_ffn_norm,
            w1: g_w1,
            w2: g_w2,
            w3: g_w3,
            norm: g_norm,
            out: g_out,
            q_norm: g_q_norm,
            k_norm: g_k_norm,
        } = g;
        let mut dw = DwGrads {
            wq: g_wq,
            wk: g_wk,
            wv: g_wv,
            wo: g_wo,
            w1: g_w1,
            w2: g_w2,
            w3: g_w3,
        };

        // Final RMSNorm: dy of the top layer.
        let ts = Instant::now();
        {
            let dy = &mut self.sets[(nl - 1) % 2].dy;
            dy.fill(0.0);
            ops::rmsnorm_bwd(
                dy,
                g_norm,
                &self.dxf,
                at(&self.taps.x, nl, dn),
                params.norm(),
                eps,
                &mut self.norm_scratch,
            );
        }
        t.add(Component::Rmsnorm, ms_since(ts));
        if let Some(h) = hook.as_mut() {
            // The classifier's gradient is final here unless it is the embedding's (tied).
            let mut pieces = vec![(layout.norm.start, &g_norm[..])];
            if !g_out.is_empty() {
                pieces.push((layout.norm.end, &g_out[..]));
            }
            h(&pieces);
        }

        for l in (0..nl).rev() {
            let (s0, s1) = self.sets.split_at_mut(1);
            let (cur, prev) = if l % 2 == 0 {
                (&mut s0[0], &s1[0])
            } else {
                (&mut s1[0], &s0[0])
            };
            let mut chain = Chain {
                d: &d,
                eps,
                rope: &self.spec.rope,
                taps: &self.taps,
                dx2n: &mut self.dx2n,
                dxn: &mut self.dxn,
                probs: &mut self.probs,
                dp: &mut self.dp,
                dres: &mut self.dres,
                norm_scratch: &mut self.norm_scratch,
                qk: &mut self.qk,
            };
            let hd_qk = if c.qk_norm { d.head_dim } else { 0 };
            let dg_qk = (at_mut(g_q_norm, l, hd_qk), at_mut(g_k_norm, l, hd_qk));
            let dg_att = at_mut(g_att_norm, l, dim);
            let dg_ffn = at_mut(g_ffn_norm, l, dim);
            let taps = &self.taps;
            let dw_ref = &mut dw;
            let tj = Instant::now();
            let (chain_res, _) = rayon::join(
                || {
                    let tc = Instant::now();
                    let r = chain.run(&mut *k, params, l, cur, dg_att, dg_ffn, dg_qk, t);
                    (r, ms_since(tc))
                },
                || {
                    if l + 1 < nl {
                        dw_ref.layer(&d, taps, prev, l + 1);
                    }
                },
            );
            let (r, chain_ms) = chain_res;
            r?;
            t.add(Component::Dw, (ms_since(tj) - chain_ms).max(0.0));
            if l > 0 {
                std::mem::swap(&mut self.sets[(l - 1) % 2].dy, &mut self.dres);
            }
            if let (Some(h), true) = (hook.as_mut(), l + 1 < nl) {
                h(&dw.pieces(&layout, g_att_norm, g_ffn_norm, l + 1));
            }
        }
        let ts = Instant::now();
        dw.layer(&d, &self.taps, &self.sets[0], 0);
        t.add(Component::Dw, ms_since(ts));
        if let Some(h) = hook.as_mut() {
            h(&dw.pieces(&layout, g_att_norm, g_ffn_norm, 0));
            if !g_q_norm.is_empty() {
                // Qwen3's q/k norm gains of every layer, final once layer 0's chain ran.
                h(&[
                    (layout.q_norm.start, &g_q_norm[..]),
                    (layout.k_norm.start, &g_k_norm[..]),
                ]);
            }
        }
        t.time(Component::Embedding, || {
            ops::embedding_bwd(g_emb, &self.dres, inputs, dim)
        });
        if let Some(h) = hook.as_mut() {
            h(&[(layout.tok_embeddings.start, &g_emb[..])]);
        }
        Ok(())
    }
}

/// The buffers the input-gradient chain of one layer works in.
struct Chain<'a> {
    d: &'a Dims,
    eps: f32,
    rope: &'a Rope,
    taps: &'a Taps,
    dx2n: &'a mut [f32],
    dxn: &'a mut [f32],
    probs: &'a mut [f32],
    dp: &'a mut [f32],
    dres: &'a mut [f32],
    norm_scratch: &'a mut [f32],
    qk: &'a mut QkNormBufs,
}

impl Chain<'_> {
    /// dy (in `g.dy`) → ffn_bwd → dx2 → sdpa_bwd1/2 → RoPE bwd → qkv_bwd → dx (in `dres`).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        k: &mut dyn Kernels,
        params: &Params,
        l: usize,
        g: &mut LayerGrads,
        dg_att: &mut [f32],
        dg_ffn: &mut [f32],
        dg_qk: (&mut [f32], &mut [f32]),
        t: &mut Timings,
    ) -> Result<()> {
        let d = self.d;
        let (n, dim, qd, kvd, h) = (d.n(), d.dim, d.q_dim(), d.kv_dim(), d.hidden);
        let (dn, qn, kvn, hn) = (dim * n, qd * n, kvd * n, h * n);
        let tp = self.taps;
        let fw = FfnWeights::of(params, l);
        let aw = AttnWeights::of(params, l);
        let mut k = Checked::new(k);

        let ts = Instant::now();
        k.ffn_bwd(
            l,
            &g.dy,
            at(&tp.h1, l, hn),
            at(&tp.h3, l, hn),
            &fw,
            FfnBwd {
                dx2n: self.dx2n,
                dh1: &mut g.dh1,
                dh3: &mut g.dh3,
            },
        )
        .with_context(|| format!("ffn_bwd, layer {l}"))?;
        t.add(Component::FfnBwd, ms_since(ts));

        let ts = Instant::now();
        g.dx2.copy_from_slice(&g.dy);
        ops::rmsnorm_bwd(
            &mut g.dx2,
            dg_ffn,
            self.dx2n,
            at(&tp.x2, l, dn),
            fw.g,
            self.eps,
            self.norm_scratch,
        );
        t.add(Component::Rmsnorm, ms_since(ts));

        let ts = Instant::now();
        k.sdpa_bwd1(
            l,
            &g.dx2,
            at(&tp.q, l, qn),
            at(&tp.k, l, kvn),
            at(&tp.v, l, kvn),
            &aw,
            SdpaBwd1 {
                dv: &mut g.dv,
                dp: self.dp,
                probs: self.probs,
            },
        )
        .with_context(|| format!("sdpa_bwd1, layer {l}"))?;
        t.add(Component::SdpaBwd1, ms_since(ts));

        let ts = Instant::now();
        k.sdpa_bwd2(
            l,
            self.probs,
            self.dp,
            at(&tp.q, l, qn),
            at(&tp.k, l, kvn),
            SdpaBwd2 {
                dq: &mut g.dq,
                dk: &mut g.dk,
            },
        )
        .with_context(|| format!("sdpa_bwd2, layer {l}"))?;
        t.add(Component::SdpaBwd2, ms_since(ts));

        let ts = Instant::now();
        ops::rope_bwd(&mut g.dq, self.rope, n, d.seq);
        ops::rope_bwd(&mut g.dk, self.rope, n, d.seq);
        t.add(Component::Rope, ms_since(ts));

        if let (Some(qg), Some(kg)) = (aw.q_norm, aw.k_norm) {
            // Qwen3: dq, dk are w.r.t. the post-norm q, k; the per-head RMSNorm backward
            // needs the pre-norm q = Wq·xn, k = Wk·xn, recomputed from the xn tap.
            let ts = Instant::now();
            let xn = at(&tp.xn, l, dn);
            let qk = &mut *self.qk;
            let proj = |w: &[f32], rows: usize, out: &mut [f32]| {
                sgemm_serial(Op::N, Op::N, rows, n, dim, 1.0, w, dim, xn, n, 0.0, out, n);
            };
            proj(aw.wq, qd, &mut qk.q);
            proj(aw.wk, kvd, &mut qk.k);
            let (dgq, dgk) = dg_qk;
            ops::head_rmsnorm_bwd(
                n,
                &mut qk.dq,
                dgq,
                &g.dq,
                &qk.q,
                qg,
                self.eps,
                self.norm_scratch,
            );
            ops::head_rmsnorm_bwd(
                n,
                &mut qk.dk,
                dgk,
                &g.dk,
                &qk.k,
                kg,
                self.eps,
                self.norm_scratch,
            );
            g.dq.copy_from_slice(&qk.dq);
            g.dk.copy_from_slice(&qk.dk);
            t.add(Component::Rmsnorm, ms_since(ts));
        }

        let ts = Instant::now();
        k.qkv_bwd(l, &g.dq, &g.dk, &g.dv, &aw, self.dxn)
            .with_context(|| format!("qkv_bwd, layer {l}"))?;
        t.add(Component::QkvBwd, ms_since(ts));

        let ts = Instant::now();
        self.dres.copy_from_slice(&g.dx2);
        ops::rmsnorm_bwd(
            self.dres,
            dg_att,
            self.dxn,
            at(&tp.x, l, dn),
            aw.g,
            self.eps,
            self.norm_scratch,
        );
        t.add(Component::Rmsnorm, ms_since(ts));
        Ok(())
    }
}

/// The layer weight gradients, stacked over layers.
struct DwGrads<'a> {
    wq: &'a mut [f32],
    wk: &'a mut [f32],
    wv: &'a mut [f32],
    wo: &'a mut [f32],
    w1: &'a mut [f32],
    w2: &'a mut [f32],
    w3: &'a mut [f32],
}

impl DwGrads<'_> {
    /// Layer `l`'s gradients as (arena offset, values), the gains included.
    fn pieces<'b>(
        &'b self,
        lay: &Layout,
        att_norm: &'b [f32],
        ffn_norm: &'b [f32],
        l: usize,
    ) -> [(usize, &'b [f32]); 9] {
        use LayerTensor::*;
        let piece = |t: LayerTensor, stacked: &'b [f32]| {
            let r = lay.layer(l, t);
            let base = lay.stacked(t).start;
            (r.start, &stacked[r.start - base..r.end - base])
        };
        [
            piece(AttentionNorm, att_norm),
            piece(Wq, self.wq),
            piece(Wk, self.wk),
            piece(Wv, self.wv),
            piece(Wo, self.wo),
            piece(FfnNorm, ffn_norm),
            piece(W1, self.w1),
            piece(W2, self.w2),
            piece(W3, self.w3),
        ]
    }

    /// dW += dY·Xᵀ for every weight of layer `l` (all `[out, in]`, token sums over N).
    ///
    /// The seven products are independent whole tasks on the pool, each single-threaded:
    /// a core that runs out of chain work takes a whole one, so no product is cut in halves
    /// (a 384×768×256 half runs ~20% slower per core than the whole 768×768×256).
    fn layer(&mut self, d: &Dims, tp: &Taps, g: &LayerGrads, l: usize) {
        let (n, dim, qd, kvd, h) = (d.n(), d.dim, d.q_dim(), d.kv_dim(), d.hidden);
        let (dn, qn, hn) = (dim * n, qd * n, h * n);
        let gate = at(&tp.gate, l, hn);
        let x2n = at(&tp.x2n, l, dn);
        let attn = at(&tp.attn, l, qn);
        let xn = at(&tp.xn, l, dn);
        let dw = move |dy: &[f32], x: &[f32], out: usize, inp: usize, w: &mut [f32]| {
            sgemm_serial(
                Op::N,
                Op::T,
                out,
                inp,
                n,
                1.0,
                dy,
                n,
                x,
                n,
                1.0,
                at_mut(w, l, out * inp),
                inp,
            );
        };
        let DwGrads {
            wq,
            wk,
            wv,
            wo,
            w1,
            w2,
            w3,
        } = self;
        // Largest first: thieves take tasks in spawn order.
        rayon::scope(|s| {
            s.spawn(move |_| dw(&g.dy, gate, dim, h, w2));
            s.spawn(move |_| dw(&g.dh1, x2n, h, dim, w1));
            s.spawn(move |_| dw(&g.dh3, x2n, h, dim, w3));
            s.spawn(move |_| dw(&g.dx2, attn, dim, qd, wo));
            s.spawn(move |_| dw(&g.dq, xn, qd, dim, wq));
            s.spawn(move |_| dw(&g.dk, xn, kvd, dim, wk));
            s.spawn(move |_| dw(&g.dv, xn, kvd, dim, wv));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::CpuKernels;

    #[test]
    fn bad_batches_are_errors_that_say_why() {
        let c = Config::llama(8, 16, 1, 2, 2, 10, 8);
        let p = Params::init_random(&c, 1);
        let mut g = Params::zeros(&c);
        let mut ws = Workspace::new(&c, 2, 4);
        let mut k = CpuKernels::new(Spec::new(&c, 2, 4));
        let mut t = Timings::default();
        let ok: Vec<u32> = (0..8).collect();
        let mut bad = ok.clone();
        bad[5] = 10;
        let e = ws
            .forward_backward(&mut k, &p, &mut g, &bad, &ok, 1.0, &mut t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("inputs") && e.contains("id 10") && e.contains("position 5"),
            "{e}"
        );
        let e = ws
            .forward_loss(&mut k, &p, &ok[..7], &ok[..7], &mut t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7 token ids") && e.contains("= 8"), "{e}");
        let other = Config::llama(8, 16, 2, 2, 2, 10, 8);
        let e = ws
            .forward_loss(&mut k, &Params::zeros(&other), &ok, &ok, &mut t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("different model"), "{e}");
        let mut long = Workspace::new(&c, 1, 9);
        let nine: Vec<u32> = (0..9).collect();
        let e = long
            .forward_loss(&mut k, &p, &nine, &nine, &mut t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds the model's seq_len 8"), "{e}");
        // Nothing was accumulated by the failed calls.
        assert!(g.data.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn a_backend_built_for_another_geometry_is_refused() {
        let c = Config::llama(8, 16, 1, 2, 2, 10, 8);
        let p = Params::init_random(&c, 1);
        let mut ws = Workspace::new(&c, 2, 4);
        let mut t = Timings::default();
        let ok: Vec<u32> = (0..8).collect();
        let mut one = CpuKernels::new(Spec::new(&c, 1, 4));
        let e = ws
            .forward_loss(&mut one, &p, &ok, &ok, &mut t)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cpu backend was built for")
                && e.contains("batch 1 × seq 4")
                && e.contains("this step runs")
                && e.contains("batch 2 × seq 4"),
            "{e}"
        );
        // The same shapes with another epsilon are another spec, too.
        let mut other = c.clone();
        other.norm_eps = 1e-6;
        let mut k = CpuKernels::new(Spec::new(&other, 2, 4));
        let e = ws
            .forward_loss(&mut k, &p, &ok, &ok, &mut t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("eps 1e-6"), "{e}");
    }

    #[test]
    fn gradients_accumulate_and_components_are_charged() {
        let c = Config::llama(8, 16, 2, 2, 1, 12, 8);
        let p = Params::init_random(&c, 2);
        let mut ws = Workspace::new(&c, 2, 5);
        ws.set_ce_chunk(3);
        let mut k = CpuKernels::new(Spec::new(&c, 2, 5));
        let ids: Vec<u32> = (0..10).map(|i| (i * 7 % 12) as u32).collect();
        let tg: Vec<u32> = (0..10).map(|i| (i * 5 % 12) as u32).collect();
        let mut once = Params::zeros(&c);
        let mut t = Timings::default();
        let l1 = ws
            .forward_backward(&mut k, &p, &mut once, &ids, &tg, 1.0, &mut t)
            .unwrap();
        // Two calls with grad_scale 0.5 add up to one with 1.0.
        let mut twice = Params::zeros(&c);
        for _ in 0..2 {
            let l2 = ws
                .forward_backward(&mut k, &p, &mut twice, &ids, &tg, 0.5, &mut t)
                .unwrap();
            assert_eq!(l1, l2);
        }
        for (a, b) in once.data.iter().zip(&twice.data) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "{a} {b}");
        }
        for comp in [
            Component::FwdAttn,
            Component::FwdFfn,
            Component::FfnBwd,
            Component::SdpaBwd1,
            Component::SdpaBwd2,
            Component::QkvBwd,
            Component::Classifier,
            Component::CrossEntropy,
        ] {
            assert!(t.get(comp) > 0.0, "{comp:?} not charged");
        }
    }
}
