#!/usr/bin/env bash
# A/B of two or more ferrum builds on one figure, alternating builds round by round so that
# the host's hour-to-hour drift hits them alike; prints each build's results and median.
#
#   bench/ab.sh MODE BIN_A BIN_B [BIN...]
#
# MODE: prefill  prompt tokens/s of a 512-token prompt (as llama-bench pp512)
#       decode   decode tokens/s of 128 tokens after that prompt (batch 1)
#       b16      output tokens/s of 16 sequences of 16 prompt + 128 generated tokens
# Environment: ROUNDS (default 5), MODEL (default: the cached default model), THREADS (2).
set -euo pipefail

mode=${1:?usage: bench/ab.sh prefill|decode|b16 BIN_A BIN_B [BIN...]}
shift
[ $# -ge 2 ] || { echo "give at least two binaries" >&2; exit 2; }
model=${MODEL:-$HOME/.cache/ferrum/models/SmolLM2-135M-Instruct.Q4_1.gguf}
threads=${THREADS:-2}
[ -f "$model" ] || { echo "no model at $model (set MODEL)" >&2; exit 2; }
prompt=$(python3 -c "import random; random.seed(1); print(' '.join(str(random.randrange(100, 49000)) for _ in range(512)))")

one() {
  local bin=$1
  case $mode in
    prefill)
      "$bin" generate --model "$model" -t "$threads" --temperature 0 --ignore-eos -n 1 \
        --prompt-ids "$prompt" --json 2>/dev/null | python3 -c \
        "import json,sys; print('%.1f' % json.load(sys.stdin)['prompt_tokens_per_s'])" ;;
    decode)
      "$bin" generate --model "$model" -t "$threads" --temperature 0 --ignore-eos -n 128 \
        --prompt-ids "$prompt" --json 2>/dev/null | python3 -c \
        "import json,sys; print('%.1f' % json.load(sys.stdin)['decode_tokens_per_s'])" ;;
    b16)
      "$bin" bench offline --model "$model" -t "$threads" --dataset random --num-prompts 16 \
        --input-len 16 --range-ratio 0 --max-running 16 --output-len 128 --json 2>/dev/null |
        python3 -c "import json,sys; print('%.1f' % json.load(sys.stdin)['output_tokens_per_s'])" ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
}

declare -A res
for _ in $(seq 1 "${ROUNDS:-5}"); do
  for bin in "$@"; do
    res[$bin]="${res[$bin]:-} $(one "$bin")"
  done
done
for bin in "$@"; do
  python3 - "$bin" ${res[$bin]} <<'PY'
import statistics, sys
xs = sorted(float(x) for x in sys.argv[2:])
print(f"{sys.argv[1]}: {' '.join(f'{x:.1f}' for x in xs)}  median {statistics.median(xs):.1f}")
PY
done
