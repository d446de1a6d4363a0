//! Speculative decoding on the real default model: a multi-row decode chunk gives each row
//! the logits single-token decoding gives (bit for bit), and greedy outputs over the golden
//! prompts are identical with every drafter on and off, one request at a time and eight at
//! once. Short continuations keep it to seconds on two cores.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use ferrum_engine::spec::ModelDrafter;
use ferrum_engine::{Engine, EngineConfig, Event, KvBudget, Request, RequestId, SpecMethod};
use ferrum_model::llama::{LlamaModel, LlamaRunner};
use ferrum_model::tokenizer::Tokenizer;
use ferrum_model::Batch;
use serde_json::Value;

struct Fixture {
    model: Arc<LlamaModel>,
    tok: Arc<Tokenizer>,
    /// (prompt tokens, llama.cpp's greedy continuation) of each golden case.
    cases: Vec<(Vec<u32>, Vec<u32>)>,
}

fn ids(v: &Value) -> Vec<u32> {
    let parsed;
    let v = match v.as_str() {
        // The golden file stores some id lists as JSON text.
        Some(s) => {
            parsed = serde_json::from_str::<Value>(s).expect("id list");
            &parsed
        }
        None => v,
    };
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let path = ferrum_model::fetch::default_model_path().expect("default model available");
        let model = Arc::new(LlamaModel::open(&path).expect("model loads"));
        let tok = Arc::new(Tokenizer::from_gguf(&model.file).expect("tokenizer loads"));
        // As in ferrum-model's golden test: `$FERRUM_GOLDEN` or the shared checkout beside.
        let golden = std::env::var_os("FERRUM_GOLDEN")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../../shared/golden/smollm2-135m.json")
            });
        let text = std::fs::read_to_string(&golden).expect("golden file");
        let g: Value = serde_json::from_str(&text).expect("golden JSON");
        let cases = g["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| (ids(&c["tokens"]), ids(&c["greedy32"])))
            .collect();
        Fixture { model, tok, cases }
    })
}

fn logits_of(runner: &mut LlamaRunner, batch: &Batch) -> Vec<f32> {
    runner.forward(batch).expect("forward").to_vec()
}

#[test]
fn multi_row_decode_chunk_equals_single_row_decodes_bit_for_bit() {
    let f = fixture();
    let (prompt, cont) = &f.cases[1];
    let chain = &cont[..5];
    let table: Vec<u32> = (0..8).collect();
    let prefill = |r: &mut LlamaRunner| {
        let mut b = Batch::default();
        let row = b.push_seq(prompt, 0, &table);
        b.seqs[0].decode = false;
        b.logits_rows.push(row);
        r.forward(&b).expect("prefill");
    };
    let mut a = LlamaRunner::new(Arc::clone(&f.model), 8, 16, 1).expect("runner");
    prefill(&mut a);
    let mut single = Vec::new();
    for (i, &t) in chain.iter().enumerate() {
        let mut b = Batch::default();
        let row = b.push_seq(&[t], prompt.len() + i, &table);
        b.logits_rows.push(row);
        single.extend(logits_of(&mut a, &b));
    }
    let mut m = LlamaRunner::new(Arc::clone(&f.model), 8, 16, 1).expect("runner");
    prefill(&mut m);
    let mut b = Batch::default();
    let last = b.push_seq(chain, prompt.len(), &table);
    b.seqs[0].decode = true;
    b.logits_rows.extend(last + 1 - chain.len()..=last);
    let multi = logits_of(&mut m, &b);
    assert_eq!(single.len(), multi.len());
    let same = single
        .iter()
        .zip(&multi)
        .all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(same, "verified rows must see exactly the decode logits");
}

fn engine(method: SpecMethod, max_running: usize) -> Engine<LlamaRunner> {
    let f = fixture();
    let (base, _) = EngineConfig::for_model(
        &f.model.config,
        KvBudget::Tokens(256 * 16),
        f.tok.stop_ids(),
    )
    .expect("valid budget");
    let mut cfg = EngineConfig {
        max_batched_tokens: 128,
        max_running,
        ..base
    };
    cfg.speculative.method = method;
    // Draft on every step whatever it costs: these tests check exactness, not speed.
    cfg.speculative.cost_aware = false;
    let runner =
        LlamaRunner::new(Arc::clone(&f.model), cfg.num_blocks, cfg.block_size, 1).expect("runner");
    Engine::new(runner, f.tok.clone(), cfg).expect("engine")
}

fn run(e: &mut Engine<LlamaRunner>, prompts: &[Vec<u32>], max_tokens: usize) -> Vec<Vec<u32>> {
    let ids: Vec<RequestId> = prompts
        .iter()
        .map(|p| {
            let r = Request {
                ignore_eos: true,
                ..Request::new(p.clone(), max_tokens)
            };
            e.submit(r).expect("request fits")
        })
        .collect();
    let mut outs: HashMap<RequestId, Vec<u32>> = HashMap::new();
    while e.has_work() {
        e.step();
        e.check_invariants().expect("invariants hold");
        for (id, ev) in e.drain_events() {
            if let Event::Token { id: t, .. } = ev {
                outs.entry(id).or_default().push(t);
            }
        }
    }
    ids.iter()
        .map(|id| outs.remove(id).unwrap_or_default())
        .collect()
}

#[test]
fn greedy_outputs_identical_with_each_drafter_at_batch_1_and_8() {
    let f = fixture();
    let prompts: Vec<Vec<u32>> = f.cases.iter().map(|c| c.0.clone()).collect();
    const N: usize = 12;
    for (batch, subset) in [(1, &prompts[..4]), (8, &prompts[..])] {
        let mut plain = engine(SpecMethod::Off, batch);
        let want: Vec<Vec<u32>> = if batch == 1 {
            subset
                .iter()
                .flat_map(|p| run(&mut plain, std::slice::from_ref(p), N))
                .collect()
        } else {
            run(&mut plain, subset, N)
        };
        for method in [SpecMethod::Ngram, SpecMethod::Suffix] {
            let mut e = engine(method, batch);
            let got: Vec<Vec<u32>> = if batch == 1 {
                subset
                    .iter()
                    .flat_map(|p| run(&mut e, std::slice::from_ref(p), N))
                    .collect()
            } else {
                run(&mut e, subset, N)
            };
            assert_eq!(got, want, "{method:?} at batch {batch}");
            let accepted: u64 = e.spec_stats().iter().map(|(_, c)| c.accepted).sum();
            let drafted: u64 = e.spec_stats().iter().map(|(_, c)| c.drafted).sum();
            eprintln!("{method:?} batch {batch}: {accepted}/{drafted} drafted tokens accepted");
            assert!(drafted > 0, "{method:?} never drafted");
        }
    }
}

#[test]
fn default_model_drafting_for_itself_is_always_accepted() {
    let f = fixture();
    let prompts: Vec<Vec<u32>> = f.cases.iter().take(4).map(|c| c.0.clone()).collect();
    const N: usize = 12;
    let mut plain = engine(SpecMethod::Off, 4);
    let want = run(&mut plain, &prompts, N);
    for prune in [0usize, 8192] {
        let mut e = engine(SpecMethod::External, 4);
        let mut d = ModelDrafter::new(Arc::clone(&f.model), 2048, 1).expect("drafter");
        if prune > 0 {
            d.prune_vocab(&(0..prune as u32).collect::<Vec<_>>());
        }
        e.set_external_drafter(Box::new(d));
        assert_eq!(run(&mut e, &prompts, N), want, "pruned to {prune}");
        let c = e.stats().spec.sum();
        eprintln!(
            "self-drafting, vocabulary {}: {}/{} drafted tokens accepted",
            if prune == 0 {
                "full".to_string()
            } else {
                prune.to_string()
            },
            c.accepted,
            c.drafted
        );
        assert!(c.drafted > 0);
        if prune == 0 {
            assert_eq!(c.accepted, c.drafted, "the model agrees with itself");
        }
    }
}
