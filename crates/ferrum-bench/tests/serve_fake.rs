//! `run_serve` against the real HTTP server over the engine's fake model (hermetic, a few
//! seconds): counts, token totals and timings must match what the workload asked for.

mod common;

use common::{start_fake_server, FakeServer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrum_bench::serve::workload::from_token_requests;
use ferrum_bench::serve::{run_serve, ClientConfig, PromptInput, ServeItem, ServeOptions};
use ferrum_bench::synthetic::{random, RandomSpec};
use ferrum_bench::BenchError;
use ferrum_engine::EngineConfig;
use ferrum_server::{ServerConfig, ASCII_VOCAB};

fn start() -> FakeServer {
    let cfg = EngineConfig {
        num_blocks: 1024,
        max_model_len: 1024,
        max_waiting: 256,
        ..EngineConfig::default()
    };
    start_fake_server(cfg, ServerConfig::default())
}

fn opts(addr: SocketAddr, concurrency: usize, rate: Option<f64>) -> ServeOptions {
    ServeOptions {
        client: ClientConfig {
            url: format!("http://{addr}/v1/"),
            api_key: None,
            model: None,
            ignore_eos: true,
            temperature: 0.0,
            timeout: Duration::from_secs(30),
            max_connections: concurrency,
        },
        concurrency,
        request_rate: rate,
        seed: 1,
        warmup: true,
    }
}

#[test]
fn token_id_completions_report_exact_counts() {
    let fake = start();
    let reqs = random(&RandomSpec {
        num_prompts: 12,
        input_len: 40,
        output_len: 6,
        range_ratio: 0.5,
        vocab: ASCII_VOCAB as u32,
        exclude: vec![0],
        seed: 3,
    })
    .unwrap();
    let want_in: u64 = reqs.iter().map(|r| r.prompt.len() as u64).sum();
    let want_out: u64 = reqs.iter().map(|r| r.output_len as u64).sum();
    let calls = AtomicUsize::new(0);
    let run = run_serve(
        &from_token_requests(reqs),
        &opts(fake.addr, 4, None),
        &|_, _| {
            calls.fetch_add(1, Ordering::Relaxed);
        },
    )
    .unwrap();
    let r = &run.report;
    assert_eq!(run.model, "fake-model");
    assert_eq!(
        (r.completed, r.failed, r.output_len_mismatch),
        (12, 0, 0),
        "{r:?}"
    );
    assert_eq!(r.total_input_tokens, want_in);
    assert_eq!(r.total_output_tokens, want_out);
    assert_eq!(calls.load(Ordering::Relaxed), 12);
    assert_eq!(r.ttft.count, 12);
    assert!(r.ttft.p50 > 0.0 && r.ttft.p50 <= r.e2e.p50);
    assert!(r.tpot.count > 0 && r.output_tokens_per_s > 0.0);
    let j = r.to_json();
    assert_eq!(j["completed"], 12);
    assert!(j["ttft_p99_s"].as_f64().is_some());
}

#[test]
fn multi_turn_chats_and_poisson_arrivals() {
    let fake = start();
    let items = vec![
        ServeItem::Chat {
            system: Some("be brief".into()),
            turns: vec!["hello there".into(), "and then?".into(), "ok".into()],
            output_len: 4,
        },
        ServeItem::Chat {
            system: None,
            turns: vec!["one".into(), "two".into()],
            output_len: 3,
        },
        ServeItem::Completion {
            prompt: PromptInput::Text("plain text".into()),
            output_len: 5,
        },
    ];
    // One worker: records come back in item order, turn by turn.
    let run = run_serve(&items, &opts(fake.addr, 1, Some(20.0)), &|_, _| {}).unwrap();
    let r = &run.report;
    assert_eq!((r.completed, r.failed), (6, 0), "{r:?}");
    assert_eq!(r.total_output_tokens, 3 * 4 + 2 * 3 + 5);
    let inputs: Vec<u64> = run.records.iter().map(|x| x.input_tokens).collect();
    // Later turns carry the history (earlier turns and the server's answers).
    assert!(inputs[0] < inputs[1] && inputs[1] < inputs[2], "{inputs:?}");
    assert!(inputs[3] < inputs[4], "{inputs:?}");
    assert!(
        inputs.iter().all(|&n| n > 0),
        "usage gives prompt tokens of chats"
    );
}

#[test]
fn bad_requests_are_counted_and_unreachable_server_is_an_error() {
    let fake = start();
    let items = vec![
        ServeItem::Completion {
            prompt: PromptInput::Ids(vec![5, 6, 100_000]),
            output_len: 3,
        },
        ServeItem::Completion {
            prompt: PromptInput::Ids(vec![5, 6, 7]),
            output_len: 3,
        },
    ];
    let run = run_serve(&items, &opts(fake.addr, 2, None), &|_, _| {}).unwrap();
    assert_eq!((run.report.completed, run.report.failed), (1, 1));
    let e = run.report.first_error.unwrap();
    assert!(e.contains("HTTP 400"), "{e}");
    drop(fake);
    let dead = "127.0.0.1:9".parse().unwrap();
    let err = run_serve(&items, &opts(dead, 1, None), &|_, _| {}).unwrap_err();
    assert!(matches!(err, BenchError::Server(_)), "{err}");
    let zero = run_serve(&items, &opts(dead, 0, None), &|_, _| {}).unwrap_err();
    assert!(matches!(zero, BenchError::Invalid(_)), "{zero}");
}
