//! The training step's loss on the pretrained stories260K fixture (GQA: 8 heads, 4 kv
//! heads; tied classifier) against an independent f64 transcription of llama2.c's `run.c`
//! `forward()` — one token at a time with a key/value cache, exactly as inference does it —
//! on a fixed window: two sequences of 45 tokens, the model's greedy continuation of BOS
//! and random ids.

use anetrain::kernels::cpu::CpuKernels;
use anetrain::model::llama2c::Model;
use anetrain::model::{Config, LayerTensor, Params};
use anetrain::train::step::Workspace;
use anetrain::train::timing::Timings;
use anetrain::util::rng::Rng;

/// run.c's `Transformer` state, in f64.
struct RunC<'a> {
    c: &'a Config,
    p: Vec<f64>,
    params: &'a Params,
    key_cache: Vec<f64>,
    value_cache: Vec<f64>,
}

fn rmsnorm(x: &[f64], w: &[f64]) -> Vec<f64> {
    let ss = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + 1e-5;
    let ss = 1.0 / ss.sqrt();
    x.iter().zip(w).map(|(v, w)| w * (ss * v)).collect()
}

/// run.c `matmul`: xout[i] = Σ_j w[i·n + j]·x[j], W (d,n) @ x (n,) -> xout (d,).
fn matmul(w: &[f64], x: &[f64], d: usize) -> Vec<f64> {
    let n = x.len();
    (0..d)
        .map(|i| (0..n).map(|j| w[i * n + j] * x[j]).sum())
        .collect()
}

fn softmax(x: &mut [f64]) {
    let m = x.iter().cloned().fold(f64::MIN, f64::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - m).exp();
        sum += *v;
    }
    x.iter_mut().for_each(|v| *v /= sum);
}

impl<'a> RunC<'a> {
    fn new(params: &'a Params) -> RunC<'a> {
        let c = params.config();
        let cache = c.n_layers * c.seq_len * c.kv_dim();
        RunC {
            c,
            p: params.data.iter().map(|&v| v as f64).collect(),
            params,
            key_cache: vec![0.0; cache],
            value_cache: vec![0.0; cache],
        }
    }

    fn w(&self, l: usize, t: LayerTensor) -> &[f64] {
        &self.p[self.params.layout.layer(l, t)]
    }

    /// run.c `forward(transformer, token, pos)`: the logits for the next token.
    fn forward(&mut self, token: u32, pos: usize) -> Vec<f64> {
        let c = self.c;
        let dim = c.dim;
        let kv_dim = c.kv_dim();
        let kv_mul = c.n_heads / c.n_kv_heads;
        let head_size = c.head_dim;
        let emb = &self.p[self.params.layout.tok_embeddings.clone()];
        let mut x = emb[token as usize * dim..(token as usize + 1) * dim].to_vec();
        for l in 0..c.n_layers {
            let xb = rmsnorm(&x, self.w(l, LayerTensor::AttentionNorm));
            let loff = l * c.seq_len * kv_dim;
            let mut q = matmul(self.w(l, LayerTensor::Wq), &xb, dim);
            let mut k = matmul(self.w(l, LayerTensor::Wk), &xb, kv_dim);
            let v = matmul(self.w(l, LayerTensor::Wv), &xb, kv_dim);
            for i in (0..dim).step_by(2) {
                let head_dim = i % head_size;
                let freq = 1.0 / 10000f64.powf(head_dim as f64 / head_size as f64);
                let val = pos as f64 * freq;
                let (fci, fcr) = val.sin_cos();
                let rotn = if i < kv_dim { 2 } else { 1 };
                for vi in 0..rotn {
                    let vec = if vi == 0 { &mut q } else { &mut k };
                    let (v0, v1) = (vec[i], vec[i + 1]);
                    vec[i] = v0 * fcr - v1 * fci;
                    vec[i + 1] = v0 * fci + v1 * fcr;
                }
            }
            self.key_cache[loff + pos * kv_dim..loff + (pos + 1) * kv_dim].copy_from_slice(&k);
            self.value_cache[loff + pos * kv_dim..loff + (pos + 1) * kv_dim].copy_from_slice(&v);
            let mut xb2 = vec![0.0; dim];
            for h in 0..c.n_heads {
                let qh = &q[h * head_size..(h + 1) * head_size];
                let mut att: Vec<f64> = (0..=pos)
                    .map(|t| {
                        let kt = &self.key_cache[loff + t * kv_dim + (h / kv_mul) * head_size..];
                        (0..head_size).map(|i| qh[i] * kt[i]).sum::<f64>()
                            / (head_size as f64).sqrt()
                    })
                    .collect();
                softmax(&mut att);
                for (t, a) in att.iter().enumerate() {
                    let vt = &self.value_cache[loff + t * kv_dim + (h / kv_mul) * head_size..];
                    for i in 0..head_size {
                        xb2[h * head_size + i] += a * vt[i];
                    }
                }
            }
            let xb = matmul(self.w(l, LayerTensor::Wo), &xb2, dim);
            x.iter_mut().zip(&xb).for_each(|(a, b)| *a += b);
            let xb = rmsnorm(&x, self.w(l, LayerTensor::FfnNorm));
            let hb = matmul(self.w(l, LayerTensor::W1), &xb, c.hidden_dim);
            let hb2 = matmul(self.w(l, LayerTensor::W3), &xb, c.hidden_dim);
            let hb: Vec<f64> = hb
                .iter()
                .zip(&hb2)
                .map(|(&v, &g)| v * (1.0 / (1.0 + (-v).exp())) * g)
                .collect();
            let xb = matmul(self.w(l, LayerTensor::W2), &hb, dim);
            x.iter_mut().zip(&xb).for_each(|(a, b)| *a += b);
        }
        let x = rmsnorm(&x, &self.p[self.params.layout.norm.clone()]);
        matmul(&self.p[self.params.layout.output.clone()], &x, c.vocab_size)
    }
}

#[test]
fn stories260k_window_loss_matches_run_c_in_f64() {
    let Some(path) = anetrain::fixture("stories260K.bin") else {
        return;
    };
    let model = Model::load(&path).unwrap();
    let params = model.params;
    let c = params.config().clone();
    assert_eq!((c.n_heads, c.n_kv_heads, c.tied), (8, 4, true));
    let (batch, seq) = (2, 45);
    // Sequence 0: the model's own greedy continuation of BOS (low loss, the regime of a
    // trained model); sequence 1: random ids (high loss).
    let mut greedy = vec![1u32];
    let mut rc = RunC::new(&params);
    for pos in 0..seq {
        let logits = rc.forward(greedy[pos], pos);
        let best = (0..logits.len())
            .max_by(|&a, &b| logits[a].partial_cmp(&logits[b]).unwrap())
            .unwrap();
        greedy.push(best as u32);
    }
    let mut rng = Rng::new(260);
    let random: Vec<u32> = (0..=seq)
        .map(|_| rng.below(c.vocab_size as u64) as u32)
        .collect();
    let mut inputs = Vec::new();
    let mut targets = Vec::new();
    for w in [&greedy, &random] {
        inputs.extend_from_slice(&w[..seq]);
        targets.extend_from_slice(&w[1..]);
    }

    let mut per_seq = [0.0f64; 2];
    for (b, loss) in per_seq.iter_mut().enumerate() {
        let mut rc = RunC::new(&params);
        for pos in 0..seq {
            let mut probs = rc.forward(inputs[b * seq + pos], pos);
            softmax(&mut probs);
            *loss -= probs[targets[b * seq + pos] as usize].ln() / seq as f64;
        }
    }
    assert!(per_seq[0] < 2.0 && per_seq[1] > 5.0, "{per_seq:?}");
    let want = (per_seq[0] + per_seq[1]) / 2.0;

    let mut ws = Workspace::new(&c, batch, seq);
    let mut k = CpuKernels::new(anetrain::kernels::Spec::new(&c, batch, seq));
    let mut t = Timings::default();
    let got = ws
        .forward_loss(&mut k, &params, &inputs, &targets, &mut t)
        .unwrap();
    eprintln!("stories260K window: step loss {got}, run.c f64 {want} (per sequence {per_seq:?})");
    assert!(
        (got as f64 - want).abs() < 1e-5 * want,
        "step loss {got} vs run.c reference {want}"
    );
    // forward_backward reports the same number and finite gradients.
    let mut grads = Params::zeros(&c);
    let got2 = ws
        .forward_backward(&mut k, &params, &mut grads, &inputs, &targets, 1.0, &mut t)
        .unwrap();
    assert_eq!(got, got2);
    assert!(grads.data.iter().all(|g| g.is_finite()));
}
