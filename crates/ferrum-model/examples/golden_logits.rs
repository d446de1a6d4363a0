//! Quick check of first-step logits against the golden file using its token ids.
use std::sync::Arc;
fn main() {
    let g: serde_json::Value = serde_json::from_str(&std::fs::read_to_string("../shared/golden/smollm2-135m.json").unwrap()).unwrap();
    let path = std::env::var("HOME").unwrap() + "/.cache/ferrum/models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let model = Arc::new(ferrum_model::llama::LlamaModel::open(path).unwrap());
    let runner = ferrum_model::llama::LlamaRunner::new(model, 64, 16, 2).unwrap();
    let mut s = ferrum_model::session::Session::new(runner);
    let mut worst = 0f32;
    let t0 = std::time::Instant::now();
    for c in g["cases"].as_array().unwrap() {
        let ids: Vec<u32> = c["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        s.reset();
        let mut logits = s.extend(&ids, None).unwrap();
        for t in c["top5"].as_array().unwrap() {
            let id = t["id"].as_u64().unwrap() as usize;
            let d = (logits[id] - t["logit"].as_f64().unwrap() as f32).abs();
            worst = worst.max(d);
        }
        let want: Vec<u32> = c["greedy32"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let mut got = vec![];
        for _ in 0..want.len() {
            let (mut bi, mut bv) = (0, f32::MIN);
            for (i, &v) in logits.iter().enumerate() { if v > bv { bv = v; bi = i; } }
            got.push(bi as u32);
            logits = s.extend(&[bi as u32], None).unwrap();
        }
        println!("{} greedy_match={} ", c["tokens"].as_array().unwrap().len(), got == want);
    }
    println!("worst top5 logit diff {worst} in {:?}", t0.elapsed());
}
