//! CPU-side operations around the six kernels: embedding, RMSNorm, RoPE, classifier,
//! fused softmax-cross-entropy. Each op is a forward/backward pair with shapes in comments.

/// RoPE tables computed exactly as llama2.c's `run.c` does in f32:
/// `freq = 1 / 10000^(i/hd)` for even `i`, angle `pos·freq`; pairs `(2j, 2j+1)` of each head
/// rotate together.
#[derive(Clone, Debug)]
pub struct Rope {
    pub head_dim: usize,
    /// `[seq_len, hd/2]`
    pub cos: Vec<f32>,
    /// `[seq_len, hd/2]`
    pub sin: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, seq_len: usize, theta: f32) -> Rope {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * half);
        let mut sin = Vec::with_capacity(seq_len * half);
        for pos in 0..seq_len {
            for j in 0..half {
                let freq = 1.0f32 / theta.powf((2 * j) as f32 / head_dim as f32);
                let val = pos as f32 * freq;
                cos.push(val.cos());
                sin.push(val.sin());
            }
        }
        Rope { head_dim, cos, sin }
    }
}
