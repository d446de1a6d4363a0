//! Serving workloads as [`ServeItem`]s.
//!
//! The serving benchmark measures servers it cannot look inside, so it does not tokenize:
//! ShareGPT prompts go out as chat text (each server applies its own template), and lengths
//! are estimated at [`CHARS_PER_TOKEN`] characters per token for filtering and for the
//! reference output length. For exact, server-independent prompt lengths use the token-id
//! datasets ([`from_token_requests`] on the [`crate::synthetic`] generators), which every
//! server sharing the model's vocabulary accepts on `/v1/completions`.

use super::{PromptInput, ServeItem};
use crate::rng::SplitMix64;
use crate::sharegpt::Conversation;
use crate::{BenchError, BenchRequest, Result};

/// Rough characters per token of English text under a BPE vocabulary (used only for
/// filtering and reference lengths, never for reported token counts).
pub const CHARS_PER_TOKEN: usize = 4;

/// Filters and lengths of the ShareGPT chat workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatLimits {
    /// Skip user turns shorter than this many characters.
    pub min_prompt_chars: usize,
    /// Skip (single-turn) or stop at (multi-turn) user turns longer than this.
    pub max_prompt_chars: usize,
    /// Every request asks for exactly this many tokens; `None` uses the reference answer's
    /// estimated length clipped to `max_output_len`.
    pub output_len: Option<usize>,
    /// Clip on reference output lengths.
    pub max_output_len: usize,
    /// System message sent with every chat.
    pub system: Option<String>,
}

impl Default for ChatLimits {
    fn default() -> Self {
        ChatLimits {
            min_prompt_chars: 16,
            max_prompt_chars: 4000,
            output_len: None,
            max_output_len: 256,
            system: None,
        }
    }
}

fn output_len(limits: &ChatLimits, answer: &str) -> usize {
    limits.output_len.unwrap_or_else(|| {
        (answer.chars().count() / CHARS_PER_TOKEN).clamp(1, limits.max_output_len.max(1))
    })
}

fn check(limits: &ChatLimits) -> Result<()> {
    if limits.output_len == Some(0) {
        return Err(BenchError::Invalid(
            "output length must be at least 1".into(),
        ));
    }
    Ok(())
}

fn fits(limits: &ChatLimits, text: &str) -> bool {
    let n = text.chars().count();
    n >= limits.min_prompt_chars && n <= limits.max_prompt_chars
}

/// Up to `n` one-turn chats: the first user turn of conversations drawn in a seeded order.
pub fn sharegpt_chats(
    convs: &[Conversation],
    n: usize,
    seed: u64,
    limits: &ChatLimits,
) -> Result<Vec<ServeItem>> {
    check(limits)?;
    let mut order: Vec<usize> = (0..convs.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    Ok(order
        .into_iter()
        .filter_map(|i| {
            let &(user, answer) = convs[i].exchanges().first()?;
            fits(limits, user).then(|| ServeItem::Chat {
                system: limits.system.clone(),
                turns: vec![user.to_string()],
                output_len: output_len(limits, answer),
            })
        })
        .take(n)
        .collect())
}

/// Up to `n` multi-turn chats: conversations with at least two exchanges, replaying up to
/// `max_turns` user turns each (stopping before a turn that is out of limits). Each turn
/// asks for `limits.output_len` tokens, or the first answer's estimated length.
pub fn sharegpt_multi_turn(
    convs: &[Conversation],
    n: usize,
    seed: u64,
    max_turns: usize,
    limits: &ChatLimits,
) -> Result<Vec<ServeItem>> {
    check(limits)?;
    if max_turns < 2 {
        return Err(BenchError::Invalid(
            "multi-turn needs max_turns >= 2".into(),
        ));
    }
    let mut order: Vec<usize> = (0..convs.len()).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    Ok(order
        .into_iter()
        .filter_map(|i| {
            let ex = convs[i].exchanges();
            let turns: Vec<String> = ex
                .iter()
                .take(max_turns)
                .take_while(|(u, _)| fits(limits, u))
                .map(|(u, _)| u.to_string())
                .collect();
            (turns.len() >= 2).then(|| ServeItem::Chat {
                system: limits.system.clone(),
                turns,
                output_len: output_len(limits, ex[0].1),
            })
        })
        .take(n)
        .collect())
}

/// `n` one-turn chats of the [`crate::repetitive`] workload (write out or rewrite a given
/// block), the case speculative decoding is for. Each asks for `output_len` tokens, or the
/// block's estimated length plus 8.
pub fn repetitive_chats(n: usize, seed: u64, output_len: Option<usize>) -> Result<Vec<ServeItem>> {
    if output_len == Some(0) {
        return Err(BenchError::Invalid(
            "output length must be at least 1".into(),
        ));
    }
    Ok(crate::repetitive::messages(n, seed)
        .into_iter()
        .map(|(message, block)| ServeItem::Chat {
            system: None,
            turns: vec![message],
            output_len: output_len.unwrap_or_else(|| block.chars().count() / CHARS_PER_TOKEN + 8),
        })
        .collect())
}

/// Token-id completions from the synthetic generators (random, shared-prefix), keeping
/// their order (shared-prefix groups stay contiguous).
pub fn from_token_requests(reqs: Vec<BenchRequest>) -> Vec<ServeItem> {
    reqs.into_iter()
        .map(|r| ServeItem::Completion {
            prompt: PromptInput::Ids(r.prompt),
            output_len: r.output_len,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sharegpt::{Role, Turn};

    fn conv(turns: &[(&str, &str)]) -> Conversation {
        Conversation {
            id: String::new(),
            turns: turns
                .iter()
                .flat_map(|(u, a)| {
                    [
                        Turn {
                            role: Role::Human,
                            text: u.to_string(),
                        },
                        Turn {
                            role: Role::Gpt,
                            text: a.to_string(),
                        },
                    ]
                })
                .collect(),
        }
    }

    fn corpus() -> Vec<Conversation> {
        let long_q = "q".repeat(100);
        let mut v: Vec<Conversation> = (0..20)
            .map(|i| {
                conv(&[(
                    &format!("question number {i:02}"),
                    &"a".repeat(40 * (i + 1)),
                )])
            })
            .collect();
        v.push(conv(&[(&long_q, "x")]));
        v.push(conv(&[("short", "y")]));
        v.push(conv(&[
            ("first question here", "first answer....."),
            ("second question here", "b"),
            ("third question here!", "c"),
        ]));
        v
    }

    #[test]
    fn single_turn_chats_respect_limits_and_lengths() {
        let limits = ChatLimits {
            max_prompt_chars: 50,
            max_output_len: 64,
            ..ChatLimits::default()
        };
        let items = sharegpt_chats(&corpus(), 100, 1, &limits).unwrap();
        assert_eq!(items.len(), 21, "long and short prompts skipped");
        for it in &items {
            let ServeItem::Chat {
                turns, output_len, ..
            } = it
            else {
                panic!("not a chat")
            };
            assert_eq!(turns.len(), 1);
            assert!(turns[0].len() <= 50 && turns[0].len() >= 16);
            assert!((1..=64).contains(output_len));
        }
        let fixed = ChatLimits {
            output_len: Some(7),
            ..limits.clone()
        };
        let items = sharegpt_chats(&corpus(), 5, 1, &fixed).unwrap();
        assert_eq!(items.len(), 5);
        assert!(items
            .iter()
            .all(|i| matches!(i, ServeItem::Chat { output_len: 7, .. })));
        assert_ne!(
            sharegpt_chats(&corpus(), 5, 1, &fixed).unwrap(),
            sharegpt_chats(&corpus(), 5, 2, &fixed).unwrap()
        );
        let zero = ChatLimits {
            output_len: Some(0),
            ..limits
        };
        assert!(sharegpt_chats(&corpus(), 5, 1, &zero).is_err());
    }

    #[test]
    fn multi_turn_keeps_only_conversations_with_two_turns() {
        let items = sharegpt_multi_turn(&corpus(), 10, 0, 2, &ChatLimits::default()).unwrap();
        assert_eq!(items.len(), 1);
        let ServeItem::Chat { turns, .. } = &items[0] else {
            panic!("not a chat")
        };
        assert_eq!(turns, &["first question here", "second question here"]);
        assert_eq!(items[0].num_requests(), 2);
        assert!(sharegpt_multi_turn(&corpus(), 10, 0, 1, &ChatLimits::default()).is_err());
    }

    #[test]
    fn repetitive_chats_quote_a_block_and_ask_for_about_its_length() {
        let items = repetitive_chats(12, 3, None).unwrap();
        assert_eq!(items.len(), 12);
        for it in &items {
            let ServeItem::Chat {
                turns, output_len, ..
            } = it
            else {
                panic!("not a chat")
            };
            assert_eq!(turns.len(), 1);
            // The block follows a blank line after the instruction.
            let (_, block) = turns[0].split_once("\n\n").expect("instruction then block");
            assert_eq!(*output_len, block.chars().count() / CHARS_PER_TOKEN + 8);
        }
        assert_eq!(items, repetitive_chats(12, 3, None).unwrap());
        let fixed = repetitive_chats(2, 0, Some(9)).unwrap();
        assert!(fixed
            .iter()
            .all(|i| matches!(i, ServeItem::Chat { output_len: 9, .. })));
        assert!(repetitive_chats(2, 0, Some(0)).is_err());
    }

    #[test]
    fn token_requests_become_id_completions_in_order() {
        let items = from_token_requests(vec![
            BenchRequest {
                prompt: vec![5, 6],
                output_len: 3,
            },
            BenchRequest {
                prompt: vec![7],
                output_len: 1,
            },
        ]);
        assert_eq!(
            items[1],
            ServeItem::Completion {
                prompt: PromptInput::Ids(vec![7]),
                output_len: 1
            }
        );
        assert_eq!(items.len(), 2);
    }
}
