//! Log-linear latency histogram in a fixed array: values below 32 get one bucket each, every
//! power of two above is split into 32 equal buckets (resolution better than 3.2%). Reported
//! percentiles are the upper edge of the bucket holding the rank (clamped to the maximum).

/// Sub-buckets per power of two (as a shift).
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed for any u64 value.
pub const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// A histogram over a caller-provided bucket array of `BUCKETS` entries.
pub struct Hist<'a> {
    buckets: &'a mut [u64],
    pub count: u64,
    sum: u128,
    /// Sum of squares (saturating), for the standard deviation.
    sum_sq: u128,
    pub min: u64,
    pub max: u64,
}

fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = e - SUB_BITS;
    let m = (v >> shift) & (SUB - 1);
    ((shift as u64 + 1) * SUB + m) as usize
}

fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = i / SUB - 1;
    let m = i % SUB;
    let lo = (SUB + m) << shift;
    lo.saturating_add((1u64 << shift) - 1)
}

impl<'a> Hist<'a> {
    /// An empty histogram; `buckets` must hold `BUCKETS` zeroed entries (fewer just lose
    /// the largest values into the last bucket).
    pub fn new(buckets: &'a mut [u64]) -> Self {
        buckets.fill(0);
        Hist {
            buckets,
            count: 0,
            sum: 0,
            sum_sq: 0,
            min: 0,
            max: 0,
        }
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        let n = self.buckets.len();
        if n == 0 {
            return;
        }
        self.buckets[index(v).min(n - 1)] += 1;
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.count += 1;
        self.sum += v as u128;
        self.sum_sq = self.sum_sq.saturating_add(v as u128 * v as u128);
    }

    /// Mean value (0 when empty).
    pub fn mean(&self) -> u64 {
        if self.count == 0 {
            0
        } else {
            (self.sum / self.count as u128) as u64
        }
    }

    /// The mean times 10^6 (six fraction digits in fixed point; 0 when empty).
    pub fn mean_micro(&self) -> u128 {
        if self.count == 0 {
            0
        } else {
            self.sum.saturating_mul(1_000_000) / self.count as u128
        }
    }

    /// The sample standard deviation (n - 1, as fio) times 10^6; 0 below two values.
    pub fn stddev_micro(&self) -> u128 {
        if self.count < 2 {
            return 0;
        }
        let n = self.count as u128;
        // sum^2 <= sum_sq * n (Cauchy-Schwarz), so the subtraction only saturates when
        // sum_sq saturated; the mean's fraction lost in sum^2 / n is below 1.
        let var = self
            .sum_sq
            .saturating_sub(self.sum.saturating_mul(self.sum) / n)
            / (n - 1);
        match var.checked_mul(1_000_000_000_000) {
            Some(v) => v.isqrt(),
            None => var.isqrt().saturating_mul(1_000_000),
        }
    }

    /// The `permille`-th per-mille percentile (e.g. 999 for p99.9); 0 when empty.
    pub fn percentile(&self, permille: u64) -> u64 {
        self.percentile_ppm(permille.saturating_mul(1000))
    }

    /// The percentile at `ppm` parts per million (e.g. 999_900 for p99.99); 0 when empty.
    pub fn percentile_ppm(&self, ppm: u64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((self.count as u128 * ppm as u128).div_ceil(1_000_000) as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max).max(self.min);
            }
        }
        self.max
    }
}
