#!/usr/bin/env bash
# Fuzzes the HTTP API against its own OpenAPI document with Schemathesis: starts the hermetic
# fake-model server (examples/fake_serve.rs) on a loopback port, waits for /health, runs
# `schemathesis run .../openapi.json` (positive and negative cases; checks: no 5xx, response
# schema, content type and status code conform to the spec), then stops the server.
# Bounded: FERRUM_ST_MAX_EXAMPLES cases per operation (default 30) and FERRUM_ST_TIMEOUT
# seconds for the whole run (default 300). The last line printed is the run's summary.
# One worker: with two, hypothesis parses lambdas' source with ast.parse on two threads at once,
# and CPython 3.11's AST recursion counter is shared between threads, so it fails at random
# with "SystemError: AST constructor recursion depth mismatch" (seen in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || { echo "schemathesis is required (python3 -m pip install schemathesis)" >&2; exit 1; }
cargo build -q -p ferrum-server --example fake_serve
bin="${CARGO_TARGET_DIR:-target}/debug/examples/fake_serve"
port=${FERRUM_ST_PORT:-18091}
max_examples=${FERRUM_ST_MAX_EXAMPLES:-30}
limit=${FERRUM_ST_TIMEOUT:-300}
log=$(mktemp)
"$bin" "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
  if curl -sf "http://127.0.0.1:$port/health" >/dev/null; then break; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "fake_serve exited:"; cat "$log"; exit 1; fi
  sleep 0.2
done
curl -sf "http://127.0.0.1:$port/health" >/dev/null || { echo "fake_serve not healthy"; cat "$log"; exit 1; }
set +e
timeout --signal=INT --kill-after=10 "$limit" \
  schemathesis --no-color run "http://127.0.0.1:$port/openapi.json" \
    --checks not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance \
    --max-examples "$max_examples" --seed "${FERRUM_ST_SEED:-1}" \
    --request-timeout 30 --workers 1 --warnings off
rc=$?
set -e
if ! kill -0 "$pid" 2>/dev/null; then
  echo "schemathesis: FAILED (the server crashed during the run)"; cat "$log"; exit 1
fi
case $rc in
  0) ;;
  124|130) echo "schemathesis: FAILED (run exceeded ${limit}s)"; exit 1 ;;
  *) echo "schemathesis: FAILED (exit $rc; see the failures above)"; exit "$rc" ;;
esac
