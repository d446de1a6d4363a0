use std::sync::OnceLock;

use proptest::prelude::*;

use super::*;
use crate::gguf::{GgufWriter, Value};
use crate::test_support;

fn model_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        Tokenizer::from_gguf(&test_support::default_model()).expect("default model tokenizer")
    })
}

fn strs(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A tiny byte-level vocabulary: every byte character, a few merges, two control tokens.
fn synthetic(pre: Option<&str>) -> GgufWriter {
    let table = pretok::unicode_to_byte_table();
    let mut tokens: Vec<String> = Vec::new();
    let mut types = Vec::new();
    for ctrl in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        tokens.push(ctrl.to_string());
        types.push(Value::I32(3));
    }
    let byte_chars: Vec<char> = (0..324u32)
        .filter(|&c| table[c as usize].is_some())
        .filter_map(char::from_u32)
        .collect();
    for c in &byte_chars {
        tokens.push(c.to_string());
        types.push(Value::I32(1));
    }
    for t in ["he", "ll", "hell", "hello", "Ġw", "Ġwo", "12"] {
        tokens.push(t.to_string());
        types.push(Value::I32(1));
    }
    let mut w = GgufWriter::new();
    w.meta("tokenizer.ggml.model", Value::String("gpt2".into()));
    if let Some(p) = pre {
        w.meta("tokenizer.ggml.pre", Value::String(p.into()));
    }
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    w.meta("tokenizer.ggml.tokens", strs(&token_refs));
    w.meta("tokenizer.ggml.token_type", Value::Array(types));
    w.meta(
        "tokenizer.ggml.merges",
        strs(&["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "1 2"]),
    );
    w.meta("tokenizer.ggml.bos_token_id", Value::U32(1));
    w.meta("tokenizer.ggml.eos_token_id", Value::U32(2));
    w
}

fn build(w: &GgufWriter) -> Result<Tokenizer> {
    let f = GgufFile::from_vec(w.to_bytes()).expect("synthetic gguf parses");
    Tokenizer::from_gguf(&f)
}

#[test]
fn golden_prompts_encode_to_llama_cpp_ids() {
    let tok = model_tokenizer();
    let golden = test_support::golden();
    assert!(!golden.cases.is_empty());
    for case in &golden.cases {
        let ids = tok.encode(case.prompt(), true).unwrap();
        assert_eq!(ids, case.tokens, "prompt {:?}", case.prompt());
    }
}

#[test]
fn golden_prompts_decode_back_to_their_text() {
    let tok = model_tokenizer();
    for case in &test_support::golden().cases {
        assert_eq!(tok.decode(&case.tokens, false).unwrap(), case.prompt());
    }
}

#[test]
fn default_model_metadata_is_read() {
    let tok = model_tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(!tok.add_bos());
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert!(tok.is_control(1) && !tok.is_control(504));
    assert_eq!(tok.token_bytes(tok.token_to_id("Ġthe").unwrap()), b" the");
    assert_eq!(tok.token_bytes(2), b"<|im_end|>");
    assert_eq!(tok.token_bytes(u32::MAX), b"");
    let stops = tok.stop_ids();
    assert!(stops.contains(&2) && stops.contains(&0), "{stops:?}");
}

#[test]
fn plain_mode_tokenizes_control_text_as_text() {
    let tok = model_tokenizer();
    let text = "<|im_start|>user\nHi<|im_end|>";
    let plain = tok.encode(text, false).unwrap();
    assert!(plain.iter().all(|&id| !tok.is_control(id)), "{plain:?}");
    assert_eq!(tok.decode(&plain, false).unwrap(), text);
    let special = tok.encode(text, true).unwrap();
    assert_eq!(special.first(), Some(&1));
    assert_eq!(special.last(), Some(&2));
}

#[test]
fn decode_skips_control_tokens_only_when_asked() {
    let tok = model_tokenizer();
    let ids = tok
        .encode("<|im_start|>assistant\nOK<|im_end|>", true)
        .unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "assistant\nOK");
    assert_eq!(
        tok.decode(&ids, false).unwrap(),
        "<|im_start|>assistant\nOK<|im_end|>"
    );
    assert!(tok.decode(&[49152], false).is_err());
}

#[test]
fn encode_prompt_follows_add_bos() {
    let tok = model_tokenizer();
    assert_eq!(
        tok.encode_prompt("Hi").unwrap(),
        tok.encode("Hi", true).unwrap()
    );
    let mut w = synthetic(Some("smollm"));
    w.meta("tokenizer.ggml.add_bos_token", Value::Bool(true));
    let t = build(&w).unwrap();
    assert_eq!(
        t.encode_prompt("hello").unwrap(),
        vec![1, t.encode("hello", true).unwrap()[0]]
    );
}

#[test]
fn stream_decoder_never_splits_characters_of_real_tokens() {
    let tok = model_tokenizer();
    let text = "Zürich 東京 Москва 😀🚀 naïve — 中文字符测试 👩‍👩‍👧";
    let ids = tok.encode(text, true).unwrap();
    // The emoji and CJK must really be split across tokens for this to test anything.
    let split_chars = ids
        .iter()
        .filter(|&&id| std::str::from_utf8(tok.token_bytes(id)).is_err())
        .count();
    assert!(split_chars > 0, "no token ends mid-character: {ids:?}");
    let mut dec = StreamDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let delta = dec.push_token(tok, id, false);
        assert!(!delta.contains('\u{FFFD}'), "partial char in {delta:?}");
        out.push_str(&delta);
    }
    out.push_str(&dec.finish());
    assert_eq!(out, text);
    assert_eq!(out, tok.decode(&ids, false).unwrap());
}

#[test]
fn stream_decoder_holds_incomplete_tail_and_flushes_it_as_replacement() {
    let mut dec = StreamDecoder::new();
    let euro = "€".as_bytes();
    assert_eq!(dec.push(&euro[..1]), "");
    assert_eq!(dec.push(&euro[1..2]), "");
    assert!(dec.has_pending());
    assert_eq!(dec.push(&euro[2..]), "€");
    assert_eq!(dec.push(b"a\xE2\x82"), "a");
    assert_eq!(dec.finish(), "\u{FFFD}");
    assert!(!dec.has_pending());
    // Certainly invalid: reported at once.
    assert_eq!(dec.push(b"\xFFb"), "\u{FFFD}b");
    assert_eq!(dec.push(b"\xE2\x82x"), "\u{FFFD}x");
}

proptest! {
    #[test]
    fn stream_decoder_concatenation_equals_lossy_decode(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(0usize..64, 0..8),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.push(bytes.len());
        cuts.sort_unstable();
        let mut dec = StreamDecoder::new();
        let mut out = String::new();
        let mut start = 0;
        for c in cuts {
            out.push_str(&dec.push(&bytes[start..c]));
            start = c;
        }
        out.push_str(&dec.finish());
        prop_assert_eq!(out, String::from_utf8_lossy(&bytes).into_owned());
    }

    #[test]
    fn model_tokenizer_round_trips_any_text(text in "\\PC{0,40}") {
        let tok = model_tokenizer();
        let ids = tok.encode(&text, false).unwrap();
        prop_assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
}

#[test]
fn unknown_pre_tokenizer_is_an_error() {
    let err = build(&synthetic(Some("made-up-pre"))).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Tokenizer);
    assert!(err.msg.contains("unsupported pre-tokenizer"), "{}", err.msg);
    assert!(err.msg.contains("made-up-pre"), "{}", err.msg);
}

#[test]
fn sentencepiece_model_is_reported_unsupported() {
    let mut clean = GgufWriter::new();
    clean.meta("tokenizer.ggml.model", Value::String("llama".into()));
    clean.meta("tokenizer.ggml.tokens", strs(&["a"]));
    let err = build(&clean).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Tokenizer);
    assert!(err.msg.contains("llama"), "{}", err.msg);
}

#[test]
fn synthetic_vocab_applies_merges_and_digit_split() {
    let t = build(&synthetic(Some("smollm"))).unwrap();
    let id = |s: &str| t.token_to_id(s).unwrap();
    assert_eq!(t.encode("hello", true).unwrap(), vec![id("hello")]);
    assert_eq!(t.encode(" wo", true).unwrap(), vec![id("Ġwo")]);
    // smollm splits every digit alone, so the "12" merge never applies.
    assert_eq!(t.encode("12", true).unwrap(), vec![id("1"), id("2")]);
    let gpt2 = build(&synthetic(Some("gpt2"))).unwrap();
    assert_eq!(gpt2.encode("12", true).unwrap(), vec![id("12")]);
    assert_eq!(
        t.encode("<|im_start|>hello", true).unwrap(),
        vec![1, id("hello")]
    );
}

#[test]
fn llama3_and_default_pre_tokenizers_build() {
    for pre in ["llama3", "llama-bpe", "default", "gpt2"] {
        let t = build(&synthetic(Some(pre))).unwrap();
        let ids = t.encode("hello wo 12", true).unwrap();
        assert_eq!(t.decode(&ids, false).unwrap(), "hello wo 12", "pre {pre}");
    }
    // Llama 3 defaults to BOS; the others do not.
    assert!(build(&synthetic(Some("llama3"))).unwrap().add_bos());
    assert!(!build(&synthetic(Some("gpt2"))).unwrap().add_bos());
}

#[test]
fn inconsistent_metadata_is_an_error_not_a_panic() {
    let mut bad_types = GgufWriter::new();
    bad_types.meta("tokenizer.ggml.model", Value::String("gpt2".into()));
    bad_types.meta("tokenizer.ggml.pre", Value::String("gpt2".into()));
    bad_types.meta("tokenizer.ggml.tokens", strs(&["a", "b"]));
    bad_types.meta(
        "tokenizer.ggml.token_type",
        Value::Array(vec![Value::I32(1)]),
    );
    assert!(build(&bad_types).is_err());

    let mut bad_bos = GgufWriter::new();
    bad_bos.meta("tokenizer.ggml.model", Value::String("gpt2".into()));
    bad_bos.meta("tokenizer.ggml.pre", Value::String("gpt2".into()));
    bad_bos.meta("tokenizer.ggml.tokens", strs(&["a", "b"]));
    bad_bos.meta("tokenizer.ggml.bos_token_id", Value::U32(7));
    assert!(build(&bad_bos).is_err());

    let mut bad_merge = GgufWriter::new();
    bad_merge.meta("tokenizer.ggml.model", Value::String("gpt2".into()));
    bad_merge.meta("tokenizer.ggml.pre", Value::String("gpt2".into()));
    bad_merge.meta("tokenizer.ggml.tokens", strs(&["a", "b"]));
    bad_merge.meta("tokenizer.ggml.merges", strs(&["a c"]));
    assert!(build(&bad_merge).is_err());

    let mut no_tokens = GgufWriter::new();
    no_tokens.meta("tokenizer.ggml.model", Value::String("gpt2".into()));
    assert!(build(&no_tokens).is_err());
}

#[test]
fn loading_the_default_tokenizer_is_fast() {
    let f = test_support::default_model();
    let t0 = std::time::Instant::now();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let dt = t0.elapsed();
    eprintln!("tokenizer load: {dt:?}");
    assert_eq!(tok.vocab_size(), 49152);
    assert!(dt.as_secs_f64() < 1.0, "tokenizer load took {dt:?}");
}

#[test]
fn tokenizer_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Tokenizer>();
    assert_send_sync::<StreamDecoder>();
}
