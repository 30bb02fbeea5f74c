//! The inputs of hotrow's tests, benches and examples, in one place: a small seeded RNG and
//! the bounded-Zipf id generator of the project's workload definitions (ranks mapped
//! through a fixed random permutation, so hot rows are scattered over the table). Test
//! code: bad arguments panic.

/// SplitMix64: small, fast, seeded; good enough for test data and id streams.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5851_F42D_4C95_7F2D)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `n` ids with repeats: two in three from the small `hot` set, the rest anywhere in
    /// `0..rows` (a skewed batch without a Zipf table; the tests' simplest stream).
    pub fn hot_ids(&mut self, n: usize, rows: usize, hot: &[u32]) -> Vec<u32> {
        (0..n)
            .map(|_| {
                if self.below(3) > 0 {
                    hot[self.below(hot.len() as u64) as usize]
                } else {
                    self.below(rows as u64) as u32
                }
            })
            .collect()
    }

    /// Uniform in `[0, n)` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform f32 in `[-1, 1)`, never exactly representable patterns like 0..n.
    pub fn value(&mut self) -> f32 {
        (self.unit() * 2.0 - 1.0) as f32
    }
}

/// `n` random f32 values in `[-1, 1)` ([`fill_random`]).
pub fn random_values(n: usize, seed: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    fill_random(&mut v, seed);
    v
}

/// Fills `v` with random f32 values in `[-1, 1)`, in parallel (seeded per chunk, so the
/// result depends only on `seed` and the length).
pub fn fill_random(v: &mut [f32], seed: u64) {
    use rayon::prelude::*;
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(k, chunk)| {
            let mut rng = Rng::new(seed.wrapping_mul(0x1000_0000_01B3) ^ k as u64);
            for x in chunk {
                *x = rng.value();
            }
        });
}

/// Bounded Zipf over ranks `1..=n` with exponent `s` (P(k) proportional to k^-s), ranks
/// mapped to ids through a seeded random permutation of `0..n`.
#[derive(Clone, Debug)]
pub struct ZipfIds {
    cdf: Vec<f64>,
    perm: Vec<u32>,
}

impl ZipfIds {
    /// A generator over `n` ids; `seed` fixes the rank-to-id permutation.
    pub fn new(n: usize, s: f64, seed: u64) -> Self {
        assert!(n > 0 && n <= u32::MAX as usize, "ZipfIds: n out of range");
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0f64;
        for k in 1..=n {
            acc += (k as f64).powf(-s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        let mut z = Self {
            cdf,
            perm: (0..n as u32).collect(),
        };
        z.reshuffle(seed);
        z
    }

    /// Redraws the rank-to-id permutation (the hot set moves), as workload W5 does.
    pub fn reshuffle(&mut self, seed: u64) {
        let mut rng = Rng::new(seed);
        for i in (1..self.perm.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            self.perm.swap(i, j);
        }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.perm.len()
    }

    /// Never true: a generator has at least one id.
    pub fn is_empty(&self) -> bool {
        self.perm.is_empty()
    }

    /// One id.
    pub fn sample(&self, rng: &mut Rng) -> u32 {
        let u = rng.unit();
        let r = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.perm.len() - 1);
        self.perm[r]
    }

    /// A batch of `b` independent ids (repeats included).
    pub fn batch(&self, b: usize, rng: &mut Rng) -> Vec<u32> {
        (0..b).map(|_| self.sample(rng)).collect()
    }
}
