//! Agent programs: multi-turn tool-using workloads, their recorded traces and the offline
//! replay of a trace under a KV retention policy.
//!
//! - [`workload`]: N agents x M turns, each turn's prompt the whole history plus a tool
//!   result, tool durations from a bimodal distribution (short 0.2-2 s, long 10-60 s).
//! - [`live`]: runs the workload against a live OpenAI-compatible server, naming each turn's
//!   program and tool (`X-Program-Id` / `X-Program-Tool`), and measures JCT, TTFT and
//!   re-prefilled tokens (`ferrum bench agents`).
//! - [`trace`] and [`replay`]: the JSONL trace `ferrum serve --trace-out` writes, and its
//!   simulation on the real engine with a fake model and a cost model (`ferrum replay`);
//!   they live in the engine crate, whose server runs the same simulation in shadow mode.

pub mod live;
pub mod workload;

pub use ferrum_engine::replay;
pub use ferrum_engine::replay::trace;
