//! Serves the engine's fake model with the ASCII test codec, to try the HTTP API (and the
//! Python client tests' plumbing) without model weights:
//! `cargo run -p ferrum-server --example fake_serve -- 127.0.0.1:8080` (the address is optional;
//! `FERRUM_API_KEY` sets a key). `scripts/schemathesis_test.sh` and the load test use it.

use std::sync::Arc;

use ferrum_engine::testing::FakeRunner;
use ferrum_engine::{Engine, EngineConfig, EngineHandle};
use ferrum_server::{run, AsciiCodec, BannerInfo, Model, ServerConfig, ASCII_VOCAB};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut config = ServerConfig::default();
    if let Some(addr) = std::env::args().nth(1) {
        config.addr = addr.parse().map_err(std::io::Error::other)?;
    }
    config.api_key = std::env::var("FERRUM_API_KEY").ok();
    let addr = config.addr;
    let api_key = config.api_key.is_some();
    run(config, move || {
        let cfg = EngineConfig {
            num_blocks: 2048,
            max_model_len: 2048,
            max_waiting: 256,
            ..EngineConfig::default()
        };
        let runner = FakeRunner::new(ASCII_VOCAB, cfg.num_blocks, cfg.block_size);
        let info = BannerInfo {
            model: "fake-model".into(),
            source: "ferrum-engine FakeRunner".into(),
            max_model_len: cfg.max_model_len,
            kv_blocks: cfg.num_blocks,
            block_size: cfg.block_size,
            addr,
            threads: 1,
            api_key,
        };
        let kv = cfg.num_blocks * cfg.block_size;
        let max_model_len = cfg.max_model_len;
        let engine = Engine::new(runner, Arc::new(AsciiCodec), cfg).map_err(|e| e.to_string())?;
        let model = Model {
            name: "fake-model".into(),
            engine: EngineHandle::spawn(engine),
            codec: Arc::new(AsciiCodec),
            max_model_len,
            kv_capacity_tokens: kv,
            shadow_sim: None,
        };
        Ok((model, info))
    })
    .await
}
