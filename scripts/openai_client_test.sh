#!/usr/bin/env bash
# Drives a live `ferrum serve` on the default model with the official `openai` Python client
# (crates/ferrum-server/tests/python/test_openai_client.py). Bounded: the server is started on
# a loopback port, waited for, tested, and stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cargo build -q -p ferrum-cli
port=${FERRUM_TEST_PORT:-18080}
log=$(mktemp)
"${CARGO_TARGET_DIR:-target}/debug/ferrum" serve --port "$port" --threads 2 --kv-cache-tokens 16384 >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "ferrum serve exited:"; cat "$log"; exit 1; fi
  sleep 1
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "server not healthy"; cat "$log"; exit 1; }
FERRUM_URL="http://127.0.0.1:$port" \
FERRUM_GOLDEN="${FERRUM_GOLDEN:-$root/../shared/golden/smollm2-135m.json}" \
  python3 -m pytest -q -p no:cacheprovider crates/ferrum-server/tests/python/test_openai_client.py
