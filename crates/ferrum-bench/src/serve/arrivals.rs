//! Request send times: all at once (closed loop, bounded by the concurrency) or a Poisson
//! process (open loop), as vLLM's `--request-rate` does.

use crate::rng::SplitMix64;

/// Offsets in seconds from the start of the run at which each of `n` requests is due.
///
/// `rate` requests per second gives exponentially distributed gaps with mean `1 / rate`
/// (a Poisson process), seeded so runs repeat; `None`, zero, negative or infinite rate sends
/// everything at time 0. The first request is always due at 0.
pub fn arrival_times(n: usize, rate: Option<f64>, seed: u64) -> Vec<f64> {
    let Some(rate) = rate.filter(|r| r.is_finite() && *r > 0.0) else {
        return vec![0.0; n];
    };
    let mut rng = SplitMix64::new(seed ^ 0x5eed_a771_0a15);
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 {
                // Uniform in (0, 1]: 53 random bits, never 0 so ln stays finite.
                let u = ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
                t += -u.ln() / rate;
            }
            t
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rate_sends_everything_at_once() {
        assert_eq!(arrival_times(3, None, 1), vec![0.0; 3]);
        assert_eq!(arrival_times(2, Some(f64::INFINITY), 1), vec![0.0; 2]);
        assert_eq!(arrival_times(2, Some(0.0), 1), vec![0.0; 2]);
        assert!(arrival_times(0, Some(1.0), 1).is_empty());
    }

    #[test]
    fn poisson_gaps_have_exponential_mean_and_spread() {
        let rate = 4.0;
        let n = 20_000;
        let t = arrival_times(n, Some(rate), 7);
        assert_eq!(t[0], 0.0);
        let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.iter().all(|g| *g > 0.0 && g.is_finite()));
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        // Exponential: mean 1/rate, coefficient of variation 1 (a fixed schedule would be 0).
        assert!((mean * rate - 1.0).abs() < 0.03, "mean {mean}");
        assert!(
            (var.sqrt() / mean - 1.0).abs() < 0.05,
            "cv {}",
            var.sqrt() / mean
        );
        // Memorylessness: P(gap > mean) = e^-1.
        let above = gaps.iter().filter(|g| **g > 1.0 / rate).count() as f64 / gaps.len() as f64;
        assert!((above - (-1.0f64).exp()).abs() < 0.02, "{above}");
    }

    #[test]
    fn same_seed_same_schedule() {
        assert_eq!(
            arrival_times(50, Some(2.0), 3),
            arrival_times(50, Some(2.0), 3)
        );
        assert_ne!(
            arrival_times(50, Some(2.0), 3),
            arrival_times(50, Some(2.0), 4)
        );
    }
}
