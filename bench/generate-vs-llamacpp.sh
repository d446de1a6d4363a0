#!/usr/bin/env bash
# Side-by-side of `ferrum generate` and llama.cpp's `llama-bench` on the same GGUF and thread
# count: prompt processing of a 512-token prompt and decoding of 128 tokens. Not part of CI.
#
#   LLAMA_BENCH=/path/to/llama-bench bench/generate-vs-llamacpp.sh [THREADS] [RUNS]
#
# llama-bench comes from llama.cpp built from the llama-cpp-python source package
# (python3 -m pip download --no-binary :all: --no-deps llama-cpp-python==0.3.36; sources under
# vendor/llama.cpp; cmake -B build -DGGML_NATIVE=ON && cmake --build build --target llama-bench).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
runs=${2:-3}
model=${FERRUM_MODEL:-$(./target/release/ferrum model fetch)}
: "${LLAMA_BENCH:?set LLAMA_BENCH to the llama-bench binary}"
# A prompt of exactly 512 tokens: random ids avoid tokenizer effects, as llama-bench does.
prompt=$(python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(100, 49000)) for _ in range(512)))")
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
pp=(); tg=(); lpp=(); ltg=()
for r in $(seq 1 "$runs"); do
  out=$(./target/release/ferrum generate --model "$model" -t "$threads" --temperature 0 --ignore-eos -n 129 \
        --prompt-ids "$prompt" --json)
  pp+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prompt_tokens_per_s"])')")
  tg+=("$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["decode_tokens_per_s"])')")
  lout=$("$LLAMA_BENCH" -m "$model" -t "$threads" -p 512 -n 128 -r 1 -o json)
  lpp+=("$(echo "$lout" | python3 -c 'import json,sys; print([x["avg_ts"] for x in json.load(sys.stdin) if x["n_prompt"]>0][0])')")
  ltg+=("$(echo "$lout" | python3 -c 'import json,sys; print([x["avg_ts"] for x in json.load(sys.stdin) if x["n_gen"]>0][0])')")
done
fpp=$(printf '%s\n' "${pp[@]}" | median); ftg=$(printf '%s\n' "${tg[@]}" | median)
gpp=$(printf '%s\n' "${lpp[@]}" | median); gtg=$(printf '%s\n' "${ltg[@]}" | median)
printf '%-14s %12s %12s %8s\n' figure ferrum llama.cpp ratio
printf '%-14s %12.1f %12.1f %8.2f\n' prefill_512 "$fpp" "$gpp" "$(python3 -c "print($fpp/$gpp)")"
printf '%-14s %12.1f %12.1f %8.2f\n' decode_128 "$ftg" "$gtg" "$(python3 -c "print($ftg/$gtg)")"
echo "(tokens/s, median of $runs runs, $threads threads, $(basename "$model"))"
