//! Incremental detokenization: turns token bytes into UTF-8 text deltas and finds stop strings.
//!
//! Tokens are byte strings (byte-level BPE can split a character across tokens), so bytes
//! wait in `pending` until they form whole characters. Text that could be the beginning of a
//! stop string is also held back; since everything emitted was never a possible stop-string
//! start, a stop string can only occur entirely inside `pending`.

/// Per-request text state.
#[derive(Debug, Default)]
pub(crate) struct TextStream {
    pending: Vec<u8>,
    stops: Vec<Vec<u8>>,
}

/// Result of pushing one token's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// Text now safe to show.
    pub text: String,
    /// A stop string was found (text up to it is in `text`; the rest is dropped).
    pub stopped: bool,
}

impl TextStream {
    /// A stream that stops at any of `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            pending: Vec::new(),
            stops: stops
                .iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Appends a token's bytes; returns the newly visible text.
    pub fn push(&mut self, bytes: &[u8]) -> Pushed {
        self.pending.extend_from_slice(bytes);
        let earliest = self
            .stops
            .iter()
            .filter_map(|s| find(&self.pending, s))
            .min();
        if let Some(pos) = earliest {
            let text = String::from_utf8_lossy(&self.pending[..pos]).into_owned();
            self.pending.clear();
            return Pushed {
                text,
                stopped: true,
            };
        }
        let hold = self.stop_prefix_suffix();
        let end = self.pending.len() - hold;
        let (text, used) = whole_chars(&self.pending[..end]);
        self.pending.drain(..used);
        Pushed {
            text,
            stopped: false,
        }
    }

    /// Everything still held back (the request ended without a stop string).
    pub fn flush(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn stop_prefix_suffix(&self) -> usize {
        let max = self.stops.iter().map(|s| s.len() - 1).max().unwrap_or(0);
        let len = self.pending.len();
        (1..=max.min(len))
            .rev()
            .find(|&k| {
                let tail = &self.pending[len - k..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(0)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decodes the longest prefix of `bytes` that does not end inside an incomplete character;
/// invalid bytes become U+FFFD. Returns the text and the bytes consumed.
fn whole_chars(bytes: &[u8]) -> (String, usize) {
    let mut out = String::new();
    let mut i = 0;
    while i < bytes.len() {
        match std::str::from_utf8(&bytes[i..]) {
            Ok(s) => {
                out.push_str(s);
                i = bytes.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(
                    std::str::from_utf8(&bytes[i..i + valid]).expect("valid_up_to is valid UTF-8"),
                );
                i += valid;
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        i += bad;
                    }
                    None => break, // incomplete character at the end: wait for more bytes
                }
            }
        }
    }
    (out, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], tokens: &[&[u8]]) -> (Vec<String>, bool, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut st = TextStream::new(&stops);
        let mut deltas = Vec::new();
        for t in tokens {
            let p = st.push(t);
            deltas.push(p.text);
            if p.stopped {
                return (deltas, true, String::new());
            }
        }
        (deltas, false, st.flush())
    }

    #[test]
    fn split_multibyte_char_is_held_until_complete() {
        let e = "é".as_bytes();
        let (d, stopped, rest) = run(&[], &[b"a", &e[..1], &e[1..], b"b"]);
        assert_eq!(d, vec!["a", "", "é", "b"]);
        assert!(!stopped && rest.is_empty());
    }

    #[test]
    fn stop_string_across_tokens_is_cut_and_not_shown() {
        let (d, stopped, _) = run(&["END"], &[b"ab E", b"N", b"Dzz"]);
        assert!(stopped);
        assert_eq!(d.concat(), "ab ");
        assert_eq!(d[0], "ab ", "the possible stop start 'E' is held back");
    }

    #[test]
    fn held_back_text_is_released_when_it_cannot_be_a_stop() {
        let (d, stopped, _) = run(&["END"], &[b"xE", b"Nd"]);
        assert!(!stopped);
        assert_eq!(d, vec!["x", "ENd"]);
    }

    #[test]
    fn flush_returns_text_held_for_a_stop_prefix() {
        let (d, stopped, rest) = run(&["END"], &[b"hi EN"]);
        assert!(!stopped);
        assert_eq!((d.concat(), rest.as_str()), ("hi ".to_string(), "EN"));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let (d, _, _) = run(&[], &[b"a\xffb"]);
        assert_eq!(d, vec!["a\u{fffd}b"]);
    }
}
