//! The threaded engine: one loop thread owns the [`Engine`]; clients talk to it through a
//! closed command enum with reply channels.
//!
//! Each request's events arrive on its own `tokio::sync::mpsc::UnboundedReceiver<Event>`
//! (sending needs no runtime; sync code uses `blocking_recv`). Dropping the receiver cancels
//! the request. The loop blocks while idle and steps continuously while there is work.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;

use crate::engine::{Engine, EngineStats, ModelRunner};
use crate::fair::TenantStats;
use crate::request::{Event, Request, RequestId, SubmitError};

type SubmitReply = Result<(RequestId, UnboundedReceiver<Event>), SubmitError>;

/// Everything a client can ask of the loop.
enum Command {
    Submit(Box<Request>, oneshot::Sender<SubmitReply>),
    Cancel(RequestId),
    Stats(oneshot::Sender<EngineStats>),
    Tenants(oneshot::Sender<Vec<TenantStats>>),
    ReleaseProgram(String, oneshot::Sender<bool>),
    Shutdown,
}

/// Cloneable client of the engine loop thread.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl EngineHandle {
    /// Moves `engine` onto a new loop thread.
    pub fn spawn<R: ModelRunner>(engine: Engine<R>) -> EngineHandle {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ferrum-engine".into())
            .spawn(move || run(engine, rx))
            .expect("spawning the engine thread");
        EngineHandle {
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
        }
    }

    fn send_submit(&self, req: Request) -> Result<oneshot::Receiver<SubmitReply>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Submit(Box::new(req), reply))
            .map_err(|_| SubmitError::ShutDown)?;
        Ok(rx)
    }

    /// Submits a request from synchronous code (do not call inside an async runtime; use
    /// [`submit_async`](Self::submit_async) there).
    pub fn submit(&self, req: Request) -> SubmitReply {
        self.send_submit(req)?
            .blocking_recv()
            .map_err(|_| SubmitError::ShutDown)?
    }

    /// Submits a request from async code.
    pub async fn submit_async(&self, req: Request) -> SubmitReply {
        self.send_submit(req)?
            .await
            .map_err(|_| SubmitError::ShutDown)?
    }

    /// Cancels a request (its stream gets `Finished { Cancelled }`); unknown ids are ignored.
    pub fn cancel(&self, id: RequestId) {
        let _ = self.tx.send(Command::Cancel(id));
    }

    fn send_stats(&self) -> Option<oneshot::Receiver<EngineStats>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Stats(reply)).ok()?;
        Some(rx)
    }

    /// Engine stats from synchronous code; `None` once the engine has shut down.
    pub fn stats(&self) -> Option<EngineStats> {
        self.send_stats()?.blocking_recv().ok()
    }

    /// Engine stats from async code; `None` once the engine has shut down.
    pub async fn stats_async(&self) -> Option<EngineStats> {
        self.send_stats()?.await.ok()
    }

    /// Ends agent program `id` (its pinned KV is released) from async code; `Some(false)`
    /// if the engine did not know it, `None` once the engine has shut down.
    pub async fn release_program_async(&self, id: String) -> Option<bool> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::ReleaseProgram(id, reply)).ok()?;
        rx.await.ok()
    }

    /// Per-tenant counters of the scheduling policy from async code (empty for FCFS);
    /// `None` once the engine has shut down.
    pub async fn tenants_async(&self) -> Option<Vec<TenantStats>> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Tenants(reply)).ok()?;
        rx.await.ok()
    }

    /// Stops the loop (open requests finish as cancelled) and waits for the thread.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Command::Shutdown);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            if t.join().is_err() {
                tracing::error!("engine thread panicked");
            }
        }
    }
}

struct Loop<R: ModelRunner> {
    engine: Engine<R>,
    senders: HashMap<RequestId, UnboundedSender<Event>>,
}

impl<R: ModelRunner> Loop<R> {
    /// Handles one command; returns `false` on shutdown.
    fn command(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit(req, reply) => {
                let res = self.engine.submit(*req).map(|id| {
                    let (tx, rx) = unbounded_channel();
                    self.senders.insert(id, tx);
                    (id, rx)
                });
                if let Err(Ok((id, _))) = reply.send(res) {
                    self.engine.cancel(id); // the client went away before the reply
                }
            }
            Command::Cancel(id) => {
                self.engine.cancel(id);
            }
            Command::Stats(reply) => {
                let _ = reply.send(self.engine.stats());
            }
            Command::Tenants(reply) => {
                let _ = reply.send(self.engine.tenant_stats());
            }
            Command::ReleaseProgram(id, reply) => {
                let _ = reply.send(self.engine.release_program(&id));
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// Cancels requests whose receivers are gone, then delivers queued events.
    fn route(&mut self) {
        let gone: Vec<RequestId> = self
            .senders
            .iter()
            .filter(|(_, s)| s.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.senders.remove(&id);
            self.engine.cancel(id);
        }
        for (id, ev) in self.engine.drain_events() {
            let done = matches!(ev, Event::Finished { .. });
            if let Some(tx) = self.senders.get(&id) {
                if tx.send(ev).is_err() && !done {
                    self.engine.cancel(id);
                }
            }
            if done {
                self.senders.remove(&id);
            }
        }
    }
}

fn run<R: ModelRunner>(engine: Engine<R>, rx: mpsc::Receiver<Command>) {
    let mut lp = Loop {
        engine,
        senders: HashMap::new(),
    };
    let mut clients_gone = false;
    'outer: loop {
        if !lp.engine.has_work() {
            if clients_gone {
                break;
            }
            match rx.recv() {
                Ok(cmd) => {
                    if !lp.command(cmd) {
                        break;
                    }
                }
                Err(RecvError) => break,
            }
        }
        while !clients_gone {
            match rx.try_recv() {
                Ok(cmd) => {
                    if !lp.command(cmd) {
                        break 'outer;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => clients_gone = true,
            }
        }
        lp.route();
        if lp.engine.has_work() {
            lp.engine.step();
        }
        lp.route();
    }
    let open: Vec<RequestId> = lp.senders.keys().copied().collect();
    for id in open {
        lp.engine.cancel(id);
    }
    lp.route();
}
