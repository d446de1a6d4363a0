//! The `ferrum` command line: one binary for generating, chatting, tokenizing, measuring
//! perplexity, managing models, serving and benchmarking.

mod bench;
mod bench_agents;
mod bench_fairness;
mod bench_serve;
mod generate;
mod load;
mod model_cmd;
mod perplexity;
mod remote_chat;
mod replay;
mod serve;
mod spec_args;

use clap::{Parser, Subcommand};

/// Ferrum: an LLM inference server for CPUs.
#[derive(Parser, Debug)]
#[command(name = "ferrum", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the model over an OpenAI-compatible HTTP API (default 127.0.0.1:8080).
    Serve(serve::ServeArgs),
    /// Generate a continuation of a prompt, streaming it to stdout.
    Generate(generate::GenerateArgs),
    /// Interactive multi-turn chat that keeps the conversation's KV between turns.
    Chat(generate::ChatArgs),
    /// Print the token ids of TEXT as a JSON array.
    Tokenize(generate::TokenizeArgs),
    /// Perplexity of a text file over consecutive windows.
    Perplexity(perplexity::PerplexityArgs),
    /// Fetch, list or inspect model files.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Benchmarks (offline engine throughput, serving latency).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Simulate a recorded agent-program trace (`serve --trace-out`) under KV retention
    /// policies, without the model.
    Replay(replay::ReplayArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRUM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Generate(a) => generate::run_generate(a),
        Command::Chat(a) => generate::run_chat(a),
        Command::Tokenize(a) => generate::run_tokenize(a),
        Command::Perplexity(a) => perplexity::run(a),
        Command::Model(c) => model_cmd::run(c),
        Command::Bench(c) => bench::run(c),
        Command::Replay(a) => replay::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
