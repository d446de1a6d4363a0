//! The `repetitive` workload: prompts that ask the model to write out again, or rewrite, a
//! given block of code or text, so most of the answer already sits in the prompt.
//!
//! This is the case speculative decoding is for (code edits, agent turns quoting earlier
//! output): a drafter that looks up the prompt proposes long runs the model accepts. The
//! blocks are built in (no download); each request pairs a block with one of a few
//! instructions, chosen by a seeded generator, and asks for about the block's length.

use crate::rng::SplitMix64;
use crate::{BenchError, BenchRequest, Result};

/// Code and prose blocks to rewrite.
const BLOCKS: [&str; 6] = [
    r#"fn parse_config(text: &str) -> Result<Config, ConfigError> {
    let mut cfg = Config::default();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(ConfigError::Syntax { line: line_no + 1 });
        };
        match key.trim() {
            "threads" => cfg.threads = value.trim().parse()?,
            "port" => cfg.port = value.trim().parse()?,
            "name" => cfg.name = value.trim().to_string(),
            other => return Err(ConfigError::UnknownKey(other.to_string())),
        }
    }
    Ok(cfg)
}"#,
    r#"def merge_intervals(intervals):
    """Merge overlapping intervals and return them sorted by start."""
    if not intervals:
        return []
    intervals = sorted(intervals, key=lambda iv: iv[0])
    merged = [list(intervals[0])]
    for start, end in intervals[1:]:
        last = merged[-1]
        if start <= last[1]:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end])
    return [tuple(iv) for iv in merged]


def total_covered(intervals):
    return sum(end - start for start, end in merge_intervals(intervals))"#,
    "The old lighthouse stood at the end of the harbour wall for more than a century. Every \
evening the keeper climbed the one hundred and twelve steps, trimmed the wick, wound the \
clockwork that turned the lens, and wrote the weather in a leather book. When the light was \
automated, the book was moved to the town museum, where visitors can still read the entries: \
calm sea, light wind from the west, two fishing boats returned after dark, fog at midnight.",
    r#"SELECT c.name, COUNT(o.id) AS orders, SUM(o.total) AS revenue
FROM customers AS c
JOIN orders AS o ON o.customer_id = c.id
WHERE o.created_at >= DATE '2024-01-01'
  AND o.status IN ('paid', 'shipped')
GROUP BY c.name
HAVING COUNT(o.id) > 3
ORDER BY revenue DESC
LIMIT 20;"#,
    "To bake the bread, mix five hundred grams of flour with ten grams of salt, seven grams of \
dried yeast and three hundred and fifty millilitres of warm water. Knead the dough for ten \
minutes until it is smooth, cover it, and leave it to rise for one hour. Shape it into a loaf, \
let it rise again for forty minutes, then bake it at two hundred and twenty degrees for thirty \
minutes until the crust is golden and the bottom sounds hollow.",
    r#"class LruCache {
  constructor(capacity) {
    this.capacity = capacity;
    this.map = new Map();
  }

  get(key) {
    if (!this.map.has(key)) return undefined;
    const value = this.map.get(key);
    this.map.delete(key);
    this.map.set(key, value);
    return value;
  }

  set(key, value) {
    this.map.delete(key);
    this.map.set(key, value);
    if (this.map.size > this.capacity) {
      this.map.delete(this.map.keys().next().value);
    }
  }
}"#,
];

/// Instructions wrapped around a block.
const INSTRUCTIONS: [&str; 3] = [
    "Repeat the following text exactly as it is written, with no comments:\n\n",
    "Here is a block. Write it out again, word for word, then stop.\n\n",
    "Copy this verbatim into your answer:\n\n",
];

/// `num_prompts` user messages (instruction then block) over the built-in blocks, each with
/// its block: the text form of the workload, for clients that send chat text and let the
/// server apply its template (`ferrum bench serve`).
pub fn messages(num_prompts: usize, seed: u64) -> Vec<(String, &'static str)> {
    let mut rng = SplitMix64::new(seed);
    (0..num_prompts)
        .map(|_| {
            let block = BLOCKS[rng.range_inclusive(0, BLOCKS.len() as u64 - 1) as usize];
            let instr =
                INSTRUCTIONS[rng.range_inclusive(0, INSTRUCTIONS.len() as u64 - 1) as usize];
            (format!("{instr}{block}"), block)
        })
        .collect()
}

/// `num_prompts` requests over the built-in blocks. `encode` turns a user message into prompt
/// tokens (chat template applied); `count` counts a text's tokens, which sets each request's
/// output length (the block's length plus a little) unless `output_len` fixes it.
pub fn requests(
    num_prompts: usize,
    seed: u64,
    output_len: Option<usize>,
    mut encode: impl FnMut(&str) -> Result<Vec<u32>>,
    mut count: impl FnMut(&str) -> Result<usize>,
) -> Result<Vec<BenchRequest>> {
    if output_len == Some(0) {
        return Err(BenchError::Invalid(
            "output length must be at least 1".into(),
        ));
    }
    let mut out = Vec::with_capacity(num_prompts);
    for (message, block) in messages(num_prompts, seed) {
        let prompt = encode(&message)?;
        if prompt.is_empty() {
            return Err(BenchError::Tokenize("a prompt encoded to no tokens".into()));
        }
        let output_len = match output_len {
            Some(n) => n,
            None => count(block)? + 8,
        };
        out.push(BenchRequest { prompt, output_len });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One "token" per byte, so lengths are easy to check.
    fn bytes(text: &str) -> Result<Vec<u32>> {
        Ok(text.bytes().map(u32::from).collect())
    }

    #[test]
    fn prompts_hold_a_block_and_ask_for_its_length() {
        let reqs = requests(20, 7, None, bytes, |t| Ok(t.len())).unwrap();
        assert_eq!(reqs.len(), 20);
        for r in &reqs {
            let text: String = r.prompt.iter().map(|&b| b as u8 as char).collect();
            let block = BLOCKS
                .iter()
                .find(|b| text.ends_with(*b))
                .expect("prompt ends with a block");
            assert_eq!(r.output_len, block.len() + 8);
        }
        // Seeded: the same seed gives the same workload, another seed another one.
        assert_eq!(reqs, requests(20, 7, None, bytes, |t| Ok(t.len())).unwrap());
        assert_ne!(reqs, requests(20, 8, None, bytes, |t| Ok(t.len())).unwrap());
    }

    #[test]
    fn fixed_output_length_is_used_and_zero_refused() {
        let reqs = requests(3, 0, Some(5), bytes, |_| Ok(1)).unwrap();
        assert!(reqs.iter().all(|r| r.output_len == 5));
        assert!(requests(3, 0, Some(0), bytes, |_| Ok(1)).is_err());
    }
}
