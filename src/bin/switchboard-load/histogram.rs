//! A latency histogram in microseconds with bounded relative error: values below 128 µs are
//! exact, larger ones fall in one of 64 buckets per power of two (at most 1.6 % wide). Recording
//! is an index computation and an increment, so every receiving task keeps its own and they are
//! merged at the end.

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are their own bucket.
const EXACT: u64 = 1 << (SUB_BITS + 1);
const BUCKETS: usize = EXACT as usize + (64 - SUB_BITS as usize - 1) * SUB;

#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn index_of(value: u64) -> usize {
    if value < EXACT {
        return value as usize;
    }
    let top_bit = 63 - value.leading_zeros();
    let shift = top_bit - SUB_BITS;
    let sub = (value >> shift) as usize & (SUB - 1);
    EXACT as usize + (shift as usize - 1) * SUB + sub
}

/// The largest value that falls in bucket `index`.
fn upper_bound_of(index: usize) -> u64 {
    if index < EXACT as usize {
        return index as u64;
    }
    let shift = (index - EXACT as usize) / SUB + 1;
    let sub = ((index - EXACT as usize) % SUB) as u64;
    (((SUB as u64) | sub) << shift) + (1u64 << shift) - 1
}

impl Histogram {
    pub(crate) fn record(&mut self, micros: u64) {
        self.counts[index_of(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn max(&self) -> u64 {
        self.max
    }

    /// The smallest bucket bound at or below which `quantile` of the values lie (never above
    /// the recorded maximum); 0 when empty.
    pub(crate) fn quantile(&self, quantile: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((quantile * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return upper_bound_of(index).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_their_values_within_two_percent() {
        for value in (0..200_000u64).chain([1 << 20, (1 << 30) + 12345, u64::MAX / 2]) {
            let index = index_of(value);
            assert!(index < BUCKETS);
            let upper = upper_bound_of(index);
            assert!(upper >= value, "{value} above its bucket's bound {upper}");
            assert!(
                (upper - value) as f64 <= value as f64 * 0.016 + 1.0,
                "{value}: bound {upper} too loose"
            );
            if index > 0 {
                assert!(
                    upper_bound_of(index - 1) < value,
                    "{value} in a later bucket"
                );
            }
        }
    }

    #[test]
    fn quantiles_of_a_known_distribution() {
        let mut histogram = Histogram::default();
        for value in 1..=1000 {
            histogram.record(value);
        }
        let mut other = Histogram::default();
        other.record(50_000);
        histogram.merge(&other);
        assert_eq!(histogram.count(), 1001);
        assert!(
            (501..=509).contains(&histogram.quantile(0.5)),
            "the bucket of 501"
        );
        assert!((990..=1000).contains(&histogram.quantile(0.99)));
        assert_eq!(histogram.quantile(1.0), 50_000);
        assert_eq!(histogram.max(), 50_000);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
