//! The random number generator of llama2.c's `run.c` (xorshift64*), used everywhere a
//! deterministic, checkpointable stream is needed: sampling (bit-compatible with run.c),
//! weight initialisation and data-window sampling. Its whole state is one `u64`.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    pub state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // run.c seeds the state directly; a zero state would stay zero forever.
        Rng {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    /// run.c `random_u32`.
    pub fn next_u32(&mut self) -> u32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    /// run.c `random_f32`: uniform in [0, 1) with 24 bits.
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16_777_216.0
    }

    /// Uniform integer in `[0, n)` (n > 0), from 64 random bits.
    pub fn below(&mut self, n: u64) -> u64 {
        let x = ((self.next_u32() as u64) << 32) | self.next_u32() as u64;
        ((x as u128 * n as u128) >> 64) as u64
    }

    /// Standard normal sample (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.next_f32() as f64 + 1.0 / 33_554_432.0).min(1.0);
        let u2 = self.next_f32() as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_run_c_xorshift_by_hand() {
        // One step of run.c's random_u32 from state 1, evaluated by hand:
        // s ^= s>>12 → 1; s ^= s<<25 → 0x2000001; s ^= s>>27 → 0x2000001;
        // (0x2000001 · 0x2545F4914F6CDD1D) >> 32, wrapping at 64 bits.
        let mut r = Rng { state: 1 };
        let expect = ((0x200_0001u64.wrapping_mul(0x2545_F491_4F6C_DD1D)) >> 32) as u32;
        assert_eq!(r.next_u32(), expect);
        assert_eq!(r.state, 0x200_0001);
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = Rng::new(42);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal() as f64).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }
}
