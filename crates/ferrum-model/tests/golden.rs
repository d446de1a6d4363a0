//! Golden agreement with llama.cpp on the default model, by the tolerances in the golden file
//! (`../shared/golden/smollm2-135m.json`, or `$FERRUM_GOLDEN`). The model is fetched if absent.
//!
//! The default numerics reproduce llama.cpp's rounding and meet every tolerance. The opt-in
//! `Numerics::Fast` rounds differently, and this model amplifies rounding (even exact f64
//! products move first-step logits by more than the file's 0.25; see docs/benchmarks.md,
//! "Numerics"), so it is held to the perplexity tolerance and to a looser logit bound.

use std::sync::Arc;

use ferrum_model::chat::{ChatMessage, ChatTemplate};
use ferrum_model::gguf::GgufFile;
use ferrum_model::llama::{LlamaModel, LlamaRunner, Numerics};
use ferrum_model::sampler::top_logprobs;
use ferrum_model::session::Session;
use ferrum_model::tokenizer::Tokenizer;
use serde_json::Value;

fn golden_dir() -> std::path::PathBuf {
    match std::env::var_os("FERRUM_GOLDEN") {
        Some(p) => std::path::PathBuf::from(p)
            .parent()
            .expect("golden file has a parent")
            .to_path_buf(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
    }
}

fn golden() -> Value {
    let path = golden_dir().join("smollm2-135m.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).expect("golden file is JSON")
}

struct Fixture {
    model: Arc<LlamaModel>,
    tok: Tokenizer,
    template: ChatTemplate,
}

fn fixture() -> Fixture {
    fixture_with(Numerics::LlamaCpp)
}

fn fixture_with(numerics: Numerics) -> Fixture {
    let path = ferrum_model::fetch::default_model_path()
        .expect("default model available (fetched if absent)");
    let file = Arc::new(GgufFile::open(path).expect("model opens"));
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let template = ChatTemplate::from_gguf(&file).expect("template");
    let model = Arc::new(LlamaModel::load_with(file, numerics).expect("model loads"));
    Fixture {
        model,
        tok,
        template,
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn case_text(f: &Fixture, case: &Value) -> String {
    if case["kind"] == "chat" {
        let msgs: Vec<ChatMessage> =
            serde_json::from_value(case["messages"].clone()).expect("messages");
        f.template.render(&msgs, true).expect("renders")
    } else {
        case["text"].as_str().expect("text").to_string()
    }
}

#[test]
fn token_ids_and_chat_templates_match_llama_cpp() {
    let g = golden();
    let f = fixture();
    for case in g["cases"].as_array().expect("cases") {
        let text = case_text(&f, case);
        if case["kind"] == "chat" {
            assert_eq!(
                text,
                case["rendered"].as_str().expect("rendered"),
                "rendered template differs"
            );
        }
        assert_eq!(
            f.tok.encode(&text, true).expect("encodes"),
            ids(&case["tokens"]),
            "token ids differ for {text:?}"
        );
    }
}

#[test]
fn first_step_logits_and_greedy_continuations_match_llama_cpp() {
    let g = golden();
    let f = fixture();
    let runner = LlamaRunner::new(Arc::clone(&f.model), 64, 16, 0).expect("runner");
    let mut session = Session::new(runner);
    let stops = f.tok.stop_ids();
    let cases = g["cases"].as_array().expect("cases");
    let mut greedy_ok = 0;
    let mut worst = 0f32;
    for case in cases {
        let prompt = ids(&case["tokens"]);
        session.reset();
        let mut logits = session.extend(&prompt, None).expect("forward");
        // First-step logits: golden top-5 each within 0.25 of ours.
        let top5 = case["top5"].as_array().expect("top5");
        for t in top5 {
            let id = t["id"].as_u64().expect("id") as usize;
            let want = t["logit"].as_f64().expect("logit") as f32;
            let d = (logits[id] - want).abs();
            worst = worst.max(d);
            assert!(
                d <= 0.25,
                "case {:?}: logit of {id} is {} vs golden {want}",
                case.get("text"),
                logits[id]
            );
        }
        // Top-1: equal where golden leads by > 0.25, else among golden top-2.
        let ours = top_logprobs(&logits, 1)[0].0;
        let g0 = top5[0]["id"].as_u64().expect("id") as u32;
        let g1 = top5[1]["id"].as_u64().expect("id") as u32;
        let lead = top5[0]["logit"].as_f64().expect("l") - top5[1]["logit"].as_f64().expect("l");
        if lead > 0.25 {
            assert_eq!(ours, g0, "top-1 differs for {:?}", case.get("text"));
        } else {
            assert!(
                ours == g0 || ours == g1,
                "top-1 not in golden top-2 for {:?}",
                case.get("text")
            );
        }
        // Greedy 32-token continuation.
        let want = ids(&case["greedy32"]);
        let mut got = Vec::new();
        for _ in 0..32 {
            let next = top_logprobs(&logits, 1)[0].0;
            got.push(next);
            if stops.contains(&next) {
                break;
            }
            logits = session.extend(&[next], None).expect("decode");
        }
        if got == want {
            greedy_ok += 1;
        } else {
            eprintln!(
                "greedy differs for {:?}:\n  ours   {got:?}\n  golden {want:?}",
                case.get("text")
            );
        }
    }
    eprintln!(
        "greedy32 identical for {greedy_ok}/{} cases; worst top-5 logit difference {worst:.4}",
        cases.len()
    );
    assert!(
        greedy_ok * 100 >= cases.len() * 80,
        "greedy32 identical for only {greedy_ok}/{} cases",
        cases.len()
    );
}

/// Perplexity of the golden text by the golden rule, and the golden value.
fn perplexity(numerics: Numerics) -> (f64, f64) {
    let g = golden();
    let p = &g["perplexity"];
    let f = fixture_with(numerics);
    let text = std::fs::read_to_string(golden_dir().join(p["file"].as_str().expect("file")))
        .expect("text file");
    let tokens = f.tok.encode(&text, false).expect("encodes");
    assert_eq!(
        tokens.len() as u64,
        p["total_tokens"].as_u64().expect("total"),
        "token count differs"
    );
    let window = p["window"].as_u64().expect("window") as usize;
    let windows = p["windows"].as_u64().expect("windows") as usize;
    let runner =
        LlamaRunner::new(Arc::clone(&f.model), window.div_ceil(16), 16, 0).expect("runner");
    let mut session = Session::new(runner);
    let (mut nll, mut scored) = (0f64, 0usize);
    for w in 0..windows {
        let win = &tokens[w * window..(w + 1) * window];
        let (n, k) = session.window_nll(win).expect("forward");
        nll += n;
        scored += k;
    }
    assert_eq!(scored as u64, p["scored_tokens"].as_u64().expect("scored"));
    ((nll / scored as f64).exp(), p["ppl"].as_f64().expect("ppl"))
}

#[test]
fn perplexity_matches_llama_cpp_within_one_percent() {
    for numerics in [Numerics::LlamaCpp, Numerics::Fast] {
        let (ppl, want) = perplexity(numerics);
        eprintln!("{numerics:?}: perplexity {ppl:.4} vs llama.cpp {want:.4}");
        assert!(
            (ppl - want).abs() / want <= 0.01,
            "{numerics:?}: perplexity {ppl} vs golden {want}"
        );
    }
}

/// Bound on first-step logit differences for `Numerics::Fast`: four times the golden file's
/// 0.25 (measured worst 0.42, and 0.49 for ggml's own generic C order).
const FAST_LOGIT_BOUND: f32 = 1.0;

#[test]
fn fast_numerics_stay_near_llama_cpp_logits() {
    let g = golden();
    let f = fixture_with(Numerics::Fast);
    let runner = LlamaRunner::new(Arc::clone(&f.model), 64, 16, 0).expect("runner");
    let mut session = Session::new(runner);
    let mut worst = 0f32;
    let mut top1_same = 0;
    let cases = g["cases"].as_array().expect("cases");
    for case in cases {
        session.reset();
        let logits = session
            .extend(&ids(&case["tokens"]), None)
            .expect("forward");
        let top5 = case["top5"].as_array().expect("top5");
        for t in top5 {
            let id = t["id"].as_u64().expect("id") as usize;
            let d = (logits[id] - t["logit"].as_f64().expect("logit") as f32).abs();
            worst = worst.max(d);
            assert!(
                d <= FAST_LOGIT_BOUND,
                "{:?}: logit of {id} off by {d}",
                case.get("text")
            );
        }
        let ours = top_logprobs(&logits, 1)[0].0;
        let g0 = top5[0]["id"].as_u64().expect("id") as u32;
        let lead = top5[0]["logit"].as_f64().expect("l") - top5[1]["logit"].as_f64().expect("l");
        if lead > f64::from(FAST_LOGIT_BOUND) {
            assert_eq!(ours, g0, "top-1 differs for {:?}", case.get("text"));
        }
        top1_same += usize::from(ours == g0);
    }
    eprintln!(
        "fast numerics: worst top-5 logit difference {worst:.4}; top-1 equal in {top1_same}/{}",
        cases.len()
    );
}

#[test]
fn batched_rows_equal_single_rows_bitwise() {
    // Batch invariance at the runtime level: two sequences in one batch give exactly the
    // logits each gives alone, with either numerics.
    for numerics in [Numerics::LlamaCpp, Numerics::Fast] {
        let f = fixture_with(numerics);
        let a: Vec<u32> = f
            .tok
            .encode("The capital of France is", false)
            .expect("enc");
        let b: Vec<u32> = f
            .tok
            .encode("def fibonacci(n):\n    return", false)
            .expect("enc");
        let mut runner = LlamaRunner::new(Arc::clone(&f.model), 8, 16, 0).expect("runner");
        let mut alone = Vec::new();
        for (seq, blocks) in [(&a, [0u32, 1]), (&b, [2, 3])] {
            let mut batch = ferrum_model::Batch::default();
            let row = batch.push_seq(seq, 0, &blocks);
            batch.logits_rows.push(row);
            alone.push(runner.forward(&batch).expect("forward").to_vec());
        }
        let mut batch = ferrum_model::Batch::default();
        let ra = batch.push_seq(&a, 0, &[4, 5]);
        let rb = batch.push_seq(&b, 0, &[6, 7]);
        batch.logits_rows.extend([ra, rb]);
        let both = runner.forward(&batch).expect("forward").to_vec();
        let vocab = f.model.config.vocab_size;
        assert!(
            both[..vocab] == alone[0][..],
            "{numerics:?}: sequence A changed when batched"
        );
        assert!(
            both[vocab..] == alone[1][..],
            "{numerics:?}: sequence B changed when batched"
        );
    }
}
