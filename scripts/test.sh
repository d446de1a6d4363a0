#!/usr/bin/env bash
# The project's test command (README): format check, lints, then every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# The HTTP API fuzzed against its own OpenAPI document (Schemathesis, on the fake model).
./scripts/schemathesis_test.sh
# The HTTP API against the official OpenAI Python client, on the real model.
./scripts/openai_client_test.sh
