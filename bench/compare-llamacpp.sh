#!/usr/bin/env bash
# ferrum vs llama.cpp on the same CPU, GGUF, thread count and context, in one run: the
# figures of the performance issue, each the median of RUNS alternating runs. Not part of CI.
#
#   bench/compare-llamacpp.sh [--json]
#
# Figures (higher is better unless marked):
#   decode_b1                decode tok/s, 128 tokens after a 512-token prompt
#                            (ferrum generate --prompt-ids vs llama-bench -n 128 -d 512)
#   prefill_512              prompt tok/s, 512 tokens (ferrum generate vs llama-bench -p 512)
#   decode_b16               decode tok/s of 16 sequences, 128 prompt + 128 generated each
#                            (ferrum bench offline, decode time = run(129 out) - run(1 out);
#                             llama-batched-bench -npp 128 -ntg 128 -npl 16, S_TG)
#   serve_sharegpt_c16       output tok/s, NUM_PROMPTS ShareGPT chats at concurrency 16,
#                            128 output tokens (ferrum bench serve against each server)
#   serve_shared_prefix_c16  output tok/s, NUM_PROMPTS prompts sharing a 550-token prefix,
#                            concurrency 16, 64 output tokens
#   *_ttft_p50_s / _p99_s    the serving runs' time to first token (lower is better)
#   peak_rss_c16             server VmHWM in MiB after both serving runs (lower is better)
# Also printed: memory read bandwidth and the batch-1 decode bound (bandwidth / model bytes).
#
# llama.cpp is built once from the llama-cpp-python 0.3.36 source package (vendor/llama.cpp)
# into ~/.cache/ferrum/llamacpp (nice'd; minutes on 2 cores). Environment knobs:
#   THREADS (2) RUNS (3) NUM_PROMPTS (64) CONCURRENCY (16) CTX (32768: 16 slots x 2048)
#   FERRUM_BIN (target/release/ferrum, built if missing) FERRUM_MODEL (default model)
#   LLAMACPP_CACHE (~/.cache/ferrum/llamacpp) LLAMACPP_SRC (an unpacked llama_cpp_python-0.3.36)
#   LLAMACPP_BUILD (a cmake build dir with the three tools; default $LLAMACPP_CACHE/build)
#   FERRUM_PORT (18480) LLAMA_PORT (18481)
#   FERRUM_NUMERICS (llama-cpp; `fast` runs ferrum with its interleaved Q4_1 kernels, whose
#   rounding differs from llama.cpp's: see docs/benchmarks.md, "Numerics")
#   Smoke-test sizes (the figures keep their names): NPP (512) NGEN (128) B16_PP (128)
#   B16_GEN (128) OUT_SHAREGPT (128) OUT_PREFIX (64)
set -euo pipefail
cd "$(dirname "$0")/.."
json=0
[[ "${1:-}" == "--json" ]] && json=1
threads=${THREADS:-2}
runs=${RUNS:-3}
nprompts=${NUM_PROMPTS:-64}
conc=${CONCURRENCY:-16}
ctx=${CTX:-32768}
npp=${NPP:-512}
ngen=${NGEN:-128}
b16pp=${B16_PP:-128}
b16gen=${B16_GEN:-128}
out_sg=${OUT_SHAREGPT:-128}
out_px=${OUT_PREFIX:-64}
fport=${FERRUM_PORT:-18480}
lport=${LLAMA_PORT:-18481}
cache=${LLAMACPP_CACHE:-$HOME/.cache/ferrum/llamacpp}
build=${LLAMACPP_BUILD:-$cache/build}
log() { echo "[compare] $*" >&2; }

# --- binaries -------------------------------------------------------------------------------
ferrum=${FERRUM_BIN:-target/release/ferrum}
if [[ ! -x "$ferrum" ]]; then
  log "building ferrum (release)"
  nice -n 10 cargo build --release -p ferrum-cli >&2
fi
model=${FERRUM_MODEL:-$("$ferrum" model fetch)}
model_bytes=$(stat -c %s "$model")

mkdir -p "$cache"
tools=(llama-server llama-bench llama-batched-bench)
missing=0
for t in "${tools[@]}"; do [[ -x "$build/bin/$t" ]] || missing=1; done
if (( missing )); then
  src=${LLAMACPP_SRC:-}
  for cand in "$cache/llama_cpp_python-0.3.36" /tmp/llamacpp/llama_cpp_python-0.3.36; do
    [[ -z "$src" && -f "$cand/vendor/llama.cpp/CMakeLists.txt" ]] && src=$cand
  done
  if [[ -z "$src" ]]; then
    log "fetching llama-cpp-python 0.3.36 sources"
    python3 -m pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36 -d "$cache" >&2
    tar -xzf "$cache/llama_cpp_python-0.3.36.tar.gz" -C "$cache"
    src=$cache/llama_cpp_python-0.3.36
  fi
  log "building ${tools[*]} from $src into $build (nice; takes a while)"
  nice -n 19 cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >&2
  nice -n 19 cmake --build "$build" --target "${tools[@]}" -j "$(nproc)" >&2
fi
bin=$build/bin

# --- memory bandwidth -----------------------------------------------------------------------
membw=$cache/membw
if [[ ! -x "$membw" || bench/membw.c -nt "$membw" ]]; then
  cc -O3 -march=native -pthread bench/membw.c -o "$membw"
fi
bw_gbs=$("$membw" "$threads" 512 5 2>/dev/null)
bound=$(python3 -c "print($bw_gbs * 1e9 / $model_bytes)")
log "memory read bandwidth ${bw_gbs} GB/s; batch-1 decode bound $(printf %.1f "$bound") tok/s ($model_bytes model bytes)"

# --- helpers --------------------------------------------------------------------------------
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print(d$1)"; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A F L   # F[name]="v1 v2 ..." for ferrum, L for llama.cpp
add() { local -n m=$1; m[$2]="${m[$2]:-} $3"; }
wait_ready() { # url pid
  for _ in $(seq 1 600); do
    curl -sf "$1/health" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || { log "server exited during start-up"; return 1; }
    sleep 0.5
  done
  log "server at $1 did not become ready"; return 1
}
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
serve_runs() { # engine-map url pid
  local map=$1 url=$2 pid=$3 out
  out=$("$ferrum" bench serve --url "$url" --dataset sharegpt --num-prompts "$nprompts" \
        --concurrency "$conc" --output-len "$out_sg" --max-prompt-chars 2000 --json)
  add "$map" serve_sharegpt_c16 "$(echo "$out" | jget '["output_tokens_per_s"]')"
  add "$map" serve_sharegpt_c16_ttft_p50_s "$(echo "$out" | jget '["ttft_p50_s"]')"
  log "  sharegpt: $(echo "$out" | jget '["completed"]') done, $(echo "$out" | jget '["failed"]') failed, $(echo "$out" | jget '["output_tokens_per_s"]') tok/s"
  out=$("$ferrum" bench serve --url "$url" --dataset shared-prefix --groups 1 --prefix-len 550 \
        --suffix-len 32 --num-prompts "$nprompts" --concurrency "$conc" --output-len "$out_px" --json)
  add "$map" serve_shared_prefix_c16 "$(echo "$out" | jget '["output_tokens_per_s"]')"
  add "$map" serve_shared_prefix_c16_ttft_p50_s "$(echo "$out" | jget '["ttft_p50_s"]')"
  add "$map" serve_shared_prefix_c16_ttft_p99_s "$(echo "$out" | jget '["ttft_p99_s"]')"
  log "  shared prefix: $(echo "$out" | jget '["completed"]') done, $(echo "$out" | jget '["output_tokens_per_s"]') tok/s"
  add "$map" peak_rss_c16 "$(awk '/VmHWM/ {print $2/1024}' "/proc/$pid/status")"
}

# A prompt of exactly $npp tokens of random ids, as llama-bench uses.
prompt=$(python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(100, 49000)) for _ in range($npp)))")

ferrum_round() {
  local out t1 t129
  out=$("$ferrum" generate --model "$model" -t "$threads" --temperature 0 --ignore-eos -n $((ngen + 1)) \
        --prompt-ids "$prompt" --json)
  add F prefill_512 "$(echo "$out" | jget '["prompt_tokens_per_s"]')"
  add F decode_b1 "$(echo "$out" | jget '["decode_tokens_per_s"]')"
  local off=("$ferrum" bench offline --model "$model" -t "$threads" --dataset random --num-prompts 16
             --input-len "$b16pp" --range-ratio 0 --max-running 16 --json)
  t1=$("${off[@]}" --output-len 1 2>/dev/null | jget '["elapsed_s"]')
  t129=$("${off[@]}" --output-len $((b16gen + 1)) 2>/dev/null | jget '["elapsed_s"]')
  add F decode_b16 "$(python3 -c "print(16 * $b16gen / max($t129 - $t1, 1e-9))")"
  "$ferrum" serve --model "$model" -t "$threads" --port "$fport" --kv-cache-tokens "$ctx" \
    --max-model-len 2048 --max-running "$conc" >/dev/null 2>&1 &
  local pid=$!
  wait_ready "http://127.0.0.1:$fport" "$pid"
  serve_runs F "http://127.0.0.1:$fport" "$pid"
  stop "$pid"
}

llama_round() {
  local out
  out=$("$bin/llama-bench" -m "$model" -t "$threads" -p "$npp" -n 0 -r 1 -o json 2>/dev/null)
  add L prefill_512 "$(echo "$out" | jget '[0]["avg_ts"]')"
  out=$("$bin/llama-bench" -m "$model" -t "$threads" -p 0 -n "$ngen" -d "$npp" -r 1 -o json 2>/dev/null)
  add L decode_b1 "$(echo "$out" | jget '[0]["avg_ts"]')"
  out=$("$bin/llama-batched-bench" -m "$model" -t "$threads" -c $((16 * (b16pp + b16gen) + 256)) -b 2048 -npp "$b16pp" -ntg "$b16gen" \
        -npl 16 --output-format jsonl 2>&1 | grep '^{"n_kv_max"' | tail -1)
  add L decode_b16 "$(echo "$out" | jget '["speed_tg"]')"
  "$bin/llama-server" -m "$model" -t "$threads" --port "$lport" -c "$ctx" -np "$conc" \
    >/dev/null 2>&1 &
  local pid=$!
  wait_ready "http://127.0.0.1:$lport" "$pid"
  serve_runs L "http://127.0.0.1:$lport" "$pid"
  stop "$pid"
}

for r in $(seq 1 "$runs"); do
  log "round $r/$runs: ferrum"; ferrum_round
  log "round $r/$runs: llama.cpp"; llama_round
done

# --- report ---------------------------------------------------------------------------------
names=(decode_b1 prefill_512 decode_b16 serve_sharegpt_c16 serve_sharegpt_c16_ttft_p50_s
       serve_shared_prefix_c16 serve_shared_prefix_c16_ttft_p50_s serve_shared_prefix_c16_ttft_p99_s
       peak_rss_c16)
rows=()
for n in "${names[@]}"; do
  f=$(printf '%s\n' ${F[$n]} | median); l=$(printf '%s\n' ${L[$n]} | median)
  rows+=("$n $f $l")
done
printf '%s\n' "${rows[@]}" | python3 -c '
import json, sys
json_out, bw, bound, threads, runs, model, numerics = sys.argv[1:8]
figs = []
for line in sys.stdin:
    n, f, l = line.split()
    f, l = float(f), float(l)
    unit = "MiB" if n.startswith("peak_rss") else "s" if n.endswith("_s") else "tok/s"
    figs.append({"name": n, "ferrum": f, "llamacpp": l, "ratio": f / l if l else None,
                 "unit": unit})
if json_out == "1":
    print(json.dumps({"figures": figs, "memory_bandwidth_gbs": float(bw),
                      "decode_b1_bound_tok_s": float(bound), "threads": int(threads),
                      "runs": int(runs), "model": model, "ferrum_numerics": numerics}))
else:
    print("%-36s%12s%12s%8s" % ("figure", "ferrum", "llama.cpp", "ratio"))
    for x in figs:
        r = "-" if x["ratio"] is None else "%.2f" % x["ratio"]
        print("%-36s%12.3f%12.3f%8s" % (x["name"], x["ferrum"], x["llamacpp"], r))
    b1 = next(x["ferrum"] for x in figs if x["name"] == "decode_b1")
    print("memory read bandwidth %.2f GB/s; batch-1 decode bound %.1f tok/s; ferrum decode_b1 at %.0f%% of it"
          % (float(bw), float(bound), 100 * b1 / float(bound)))
    print("(medians of %s alternating runs, %s threads, %s, ferrum numerics %s; tok/s, seconds, MiB)"
          % (runs, threads, model, numerics))
' "$json" "$bw_gbs" "$bound" "$threads" "$runs" "$(basename "$model")" "${FERRUM_NUMERICS:-llama-cpp}"
