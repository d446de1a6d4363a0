#!/usr/bin/env python3
"""Synthetic agent-program trace for `ferrum replay`, shaped like `ferrum bench agents`.

Explores retention settings without the model: N agents x M turns, each turn's prompt the
history plus a tool result, tools short (0.2-2 s) with probability --short-prob else long
(10-60 s), scaled by --time-scale. Token counts are estimated from word counts with the
ratios SmolLM2's tokenizer gave on the benchmark's words (task ~1.65 tokens a word, tool
result ~1.75 plus its header); a live run's `--trace-out` is the exact version.

    bench/agents_synth_trace.py --agents 8 --turns 6 --time-scale 0.5 > /tmp/t.jsonl
    ferrum replay /tmp/t.jsonl --policy lru,ttl,shadow --kv-cache-tokens 2048 --max-running 2
"""
import argparse
import json
import random


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--agents", type=int, default=8)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--time-scale", type=float, default=0.1)
    ap.add_argument("--short-prob", type=float, default=0.7)
    ap.add_argument("--task-words", type=int, default=300)
    ap.add_argument("--result-words", type=int, default=100)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    short_tools, long_tools = ["grep", "read_file", "calc"], ["run_tests", "web_search"]
    for ag in range(a.agents):
        prompt = round(1.65 * a.task_words) + 10
        prev_tool, gap = None, None
        t = 0.01 * ag
        for k in range(a.turns):
            last = k == a.turns - 1
            if last:
                tool, dur = None, None
            elif rng.random() < a.short_prob:
                tool, dur = rng.choice(short_tools), rng.uniform(0.2, 2.0) * a.time_scale
            else:
                tool, dur = rng.choice(long_tools), rng.uniform(10.0, 60.0) * a.time_scale
            turn = {
                "program": f"agent-{a.seed}-{ag}", "turn": k, "tool": tool,
                "prev_tool": prev_tool, "arrival_s": t, "finish_s": t + 1.0,
                "prompt_tokens": prompt, "cached_tokens": 0,
                "output_tokens": a.output_len, "finish_reason": "length",
            }
            if gap is not None:
                turn["gap_s"] = gap
            print(json.dumps(turn))
            t += 1.0 + (dur or 0.0)
            prompt += a.output_len + round(1.75 * a.result_words) + 6
            prev_tool, gap = tool, dur


if __name__ == "__main__":
    main()
