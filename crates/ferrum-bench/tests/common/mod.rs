//! A live HTTP server over the engine's fake model on a loopback port, shared by the bench
//! crate's hermetic end-to-end tests.

use std::net::SocketAddr;
use std::sync::Arc;

use ferrum_engine::testing::FakeRunner;
use ferrum_engine::{Engine, EngineConfig, EngineHandle};
use ferrum_server::shadow_sim::ShadowSim;
use ferrum_server::{serve, AsciiCodec, Model, Server, ServerConfig, ASCII_VOCAB};

/// A running fake server; dropping it shuts the server down and joins its thread.
pub struct FakeServer {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts `ferrum_server::serve` on 127.0.0.1 (any free port) with a fake-model engine built
/// from `engine_cfg`, serving it as `fake-model` under `server_cfg`.
pub fn start_fake_server(engine_cfg: EngineConfig, server_cfg: ServerConfig) -> FakeServer {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("send addr");
            let runner = FakeRunner::new(ASCII_VOCAB, engine_cfg.num_blocks, engine_cfg.block_size);
            let kv = engine_cfg.num_blocks * engine_cfg.block_size;
            let max_model_len = engine_cfg.max_model_len;
            let shadow_sim = ShadowSim::for_engine(&engine_cfg);
            let engine = Engine::new(runner, Arc::new(AsciiCodec), engine_cfg).expect("engine");
            let server = Server::new(server_cfg);
            server.set_model(Model {
                name: "fake-model".into(),
                engine: EngineHandle::spawn(engine),
                codec: Arc::new(AsciiCodec),
                max_model_len,
                kv_capacity_tokens: kv,
                shadow_sim,
            });
            serve(listener, server, async {
                let _ = stop_rx.await;
            })
            .await
            .expect("serve");
        });
    });
    let addr = addr_rx.recv().expect("server address");
    FakeServer {
        addr,
        stop: Some(stop),
        thread: Some(thread),
    }
}
