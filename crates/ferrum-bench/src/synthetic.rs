//! Seeded synthetic workloads made of random token ids.
//!
//! - [`random`]: prompts and outputs of random lengths around a mean (vLLM's "random"
//!   dataset), for raw throughput without a dataset download.
//! - [`shared_prefix`]: `groups` groups of prompts; every prompt of a group starts with the
//!   same long "system prompt" and ends with its own short question. With the prefix cache on,
//!   only the first prompt of each group should prefill the shared part.
//!
//! Token ids are drawn from `0..vocab` minus an excluded set (pass the model's stop tokens so
//! prompts never contain an end-of-turn).

use crate::rng::SplitMix64;
use crate::{BenchError, BenchRequest, Result};

/// Shape of a random-length workload.
#[derive(Debug, Clone, PartialEq)]
pub struct RandomSpec {
    /// Requests to generate.
    pub num_prompts: usize,
    /// Mean prompt length in tokens.
    pub input_len: usize,
    /// Mean output length in tokens.
    pub output_len: usize,
    /// Lengths are uniform in `mean * (1 - r) ..= mean * (1 + r)`, `0 <= r < 1`.
    pub range_ratio: f64,
    /// Token ids are drawn below this.
    pub vocab: u32,
    /// Ids never drawn (stop tokens).
    pub exclude: Vec<u32>,
    /// Seed; equal specs give equal workloads.
    pub seed: u64,
}

/// Shape of a shared-prefix workload.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPrefixSpec {
    /// Distinct shared prefixes.
    pub groups: usize,
    /// Prompts per group.
    pub prompts_per_group: usize,
    /// Tokens of each group's shared prefix.
    pub prefix_len: usize,
    /// Tokens of each prompt's own suffix.
    pub suffix_len: usize,
    /// Output length of every request.
    pub output_len: usize,
    /// Token ids are drawn below this.
    pub vocab: u32,
    /// Ids never drawn (stop tokens).
    pub exclude: Vec<u32>,
    /// Seed; equal specs give equal workloads.
    pub seed: u64,
}

struct TokenSource {
    rng: SplitMix64,
    vocab: u32,
    exclude: Vec<u32>,
}

impl TokenSource {
    fn new(seed: u64, vocab: u32, exclude: &[u32]) -> Result<Self> {
        let allowed = (0..vocab).filter(|t| !exclude.contains(t)).take(2).count();
        if allowed < 2 {
            return Err(BenchError::Invalid(format!(
                "vocabulary of {vocab} tokens leaves fewer than 2 usable ids"
            )));
        }
        Ok(TokenSource {
            rng: SplitMix64::new(seed),
            vocab,
            exclude: exclude.to_vec(),
        })
    }

    fn token(&mut self) -> u32 {
        loop {
            let t = self.rng.range_inclusive(0, u64::from(self.vocab) - 1) as u32;
            if !self.exclude.contains(&t) {
                return t;
            }
        }
    }

    fn tokens(&mut self, n: usize) -> Vec<u32> {
        (0..n).map(|_| self.token()).collect()
    }

    fn len_around(&mut self, mean: usize, ratio: f64) -> usize {
        let lo = ((mean as f64) * (1.0 - ratio)).round().max(1.0) as u64;
        let hi = ((mean as f64) * (1.0 + ratio)).round().max(1.0) as u64;
        self.rng.range_inclusive(lo, hi) as usize
    }
}

/// Random prompts of random lengths; see [`RandomSpec`].
pub fn random(spec: &RandomSpec) -> Result<Vec<BenchRequest>> {
    if spec.input_len == 0 || spec.output_len == 0 {
        return Err(BenchError::Invalid(
            "input and output lengths must be at least 1".into(),
        ));
    }
    if !(0.0..1.0).contains(&spec.range_ratio) {
        return Err(BenchError::Invalid(format!(
            "range ratio {} is not in [0, 1)",
            spec.range_ratio
        )));
    }
    let mut src = TokenSource::new(spec.seed, spec.vocab, &spec.exclude)?;
    Ok((0..spec.num_prompts)
        .map(|_| {
            let n = src.len_around(spec.input_len, spec.range_ratio);
            let output_len = src.len_around(spec.output_len, spec.range_ratio);
            BenchRequest {
                prompt: src.tokens(n),
                output_len,
            }
        })
        .collect())
}

/// Groups of prompts sharing a long prefix, group after group; see [`SharedPrefixSpec`].
pub fn shared_prefix(spec: &SharedPrefixSpec) -> Result<Vec<BenchRequest>> {
    if spec.prefix_len + spec.suffix_len == 0 || spec.output_len == 0 {
        return Err(BenchError::Invalid(
            "prompts and outputs must have at least 1 token".into(),
        ));
    }
    let mut src = TokenSource::new(spec.seed, spec.vocab, &spec.exclude)?;
    let mut out = Vec::with_capacity(spec.groups * spec.prompts_per_group);
    for _ in 0..spec.groups {
        let prefix = src.tokens(spec.prefix_len);
        for _ in 0..spec.prompts_per_group {
            let mut prompt = prefix.clone();
            prompt.extend(src.tokens(spec.suffix_len));
            out.push(BenchRequest {
                prompt,
                output_len: spec.output_len,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rspec(seed: u64) -> RandomSpec {
        RandomSpec {
            num_prompts: 200,
            input_len: 100,
            output_len: 20,
            range_ratio: 0.5,
            vocab: 50,
            exclude: vec![0, 2],
            seed,
        }
    }

    #[test]
    fn random_lengths_stay_in_range_and_ids_avoid_excluded() {
        let reqs = random(&rspec(1)).unwrap();
        assert_eq!(reqs.len(), 200);
        let mut lens = std::collections::BTreeSet::new();
        for r in &reqs {
            assert!((50..=150).contains(&r.prompt.len()), "{}", r.prompt.len());
            assert!((10..=30).contains(&r.output_len));
            assert!(r.prompt.iter().all(|&t| t < 50 && t != 0 && t != 2));
            lens.insert(r.prompt.len());
        }
        assert!(lens.len() > 20, "lengths vary");
        let mean = reqs.iter().map(|r| r.prompt.len()).sum::<usize>() as f64 / 200.0;
        assert!((90.0..110.0).contains(&mean), "mean {mean}");
    }

    #[test]
    fn random_is_reproducible_per_seed() {
        assert_eq!(random(&rspec(5)).unwrap(), random(&rspec(5)).unwrap());
        assert_ne!(random(&rspec(5)).unwrap(), random(&rspec(6)).unwrap());
    }

    #[test]
    fn zero_ratio_gives_exact_lengths() {
        let reqs = random(&RandomSpec {
            range_ratio: 0.0,
            ..rspec(1)
        })
        .unwrap();
        assert!(reqs
            .iter()
            .all(|r| r.prompt.len() == 100 && r.output_len == 20));
    }

    #[test]
    fn bad_specs_are_errors() {
        assert!(random(&RandomSpec {
            range_ratio: 1.0,
            ..rspec(1)
        })
        .is_err());
        assert!(random(&RandomSpec {
            input_len: 0,
            ..rspec(1)
        })
        .is_err());
        assert!(random(&RandomSpec {
            vocab: 3,
            exclude: vec![0, 1],
            ..rspec(1)
        })
        .is_err());
        assert!(random(&RandomSpec {
            vocab: 0,
            ..rspec(1)
        })
        .is_err());
    }

    #[test]
    fn shared_prefix_groups_share_exactly_their_prefix() {
        let spec = SharedPrefixSpec {
            groups: 3,
            prompts_per_group: 4,
            prefix_len: 40,
            suffix_len: 8,
            output_len: 5,
            vocab: 1000,
            exclude: vec![],
            seed: 9,
        };
        let reqs = shared_prefix(&spec).unwrap();
        assert_eq!(reqs.len(), 12);
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(r.prompt.len(), 48);
            assert_eq!(r.output_len, 5);
            let first = &reqs[i / 4 * 4];
            assert_eq!(
                r.prompt[..40],
                first.prompt[..40],
                "same group shares the prefix"
            );
        }
        assert_ne!(reqs[0].prompt[..40], reqs[4].prompt[..40], "groups differ");
        assert_ne!(
            reqs[0].prompt[40..],
            reqs[1].prompt[40..],
            "suffixes differ"
        );
    }
}
