#!/usr/bin/env python3
"""Bounded load test of a running ferrum server: C concurrent streaming clients, N requests.

Each streamed greedy answer must equal the non-streamed greedy answer for the same prompt
(computed first, one at a time), so batching, prefix caching and streaming are checked for
correctness under load, not only for speed. Reports failures, latency percentiles and, with
--pid, the server's resident memory (from /proc/<pid>/status), sampled through the run: memory
that grows once while the first requests warm the caches (KV pages, scratch buffers, weight
pages) is expected; memory that keeps growing with the number of requests served is a leak. So
"flat" is checked from the point where the first --warmup requests have finished (default:
max(concurrency, requests / 10)) to the end, within --rss-tolerance-mib.

    python3 load_test.py --url http://127.0.0.1:8080 --requests 256 --concurrency 64 --pid $(pgrep -n ferrum)

Exit status: 0 when every request succeeded and matched exactly once (no failure, duplicate
or loss) and, with --pid, RSS stayed flat after warm-up; 1 otherwise; the last line printed is a one-line summary. Only talks to --url
(keep it on loopback) and stops by itself after --deadline seconds.
"""

import argparse
import asyncio
import json
import statistics
import sys
import time

import openai

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a land far away,",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "The capital of France is",
    "List three colors:",
    "Water boils at",
    "In 1969, humans first",
    "The best way to learn programming is",
    "Photosynthesis is the process by which",
    "A haiku about autumn:\n",
    "SELECT name FROM users WHERE",
    "The three laws of motion are",
    "My favourite breakfast is",
    "Translate 'good morning' to French:",
    "The largest planet in the solar system is",
    "Rust is a programming language that",
]


def rss_kib(pid):
    """(VmRSS, VmHWM) of `pid` in KiB, or None when unreadable."""
    if pid is None:
        return None
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(val.split()[0])
    except OSError:
        return None
    return out


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def reference(client, model, prompt, max_tokens):
    r = await client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0
    )
    return r.choices[0].text


async def one(client, model, i, prompt, want, max_tokens, sem, results):
    async with sem:
        t0 = time.perf_counter()
        ttft = None
        text, finish = "", None
        try:
            stream = await client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
            )
            async for chunk in stream:
                for ch in chunk.choices:
                    if ch.text and ttft is None:
                        ttft = time.perf_counter() - t0
                    text += ch.text
                    finish = ch.finish_reason or finish
        except Exception as e:  # any failure is reported, never raised
            results.append({"i": i, "ok": False, "error": f"{type(e).__name__}: {e}"})
            return
        total = time.perf_counter() - t0
        ok = text == want and finish in ("stop", "length")
        res = {"i": i, "ok": ok, "ttft": ttft, "total": total}
        if not ok:
            res.update(prompt=prompt, want=want, got=text, finish=finish)
        results.append(res)


async def main(args):
    client = openai.AsyncOpenAI(
        base_url=args.url.rstrip("/") + "/v1",
        api_key=args.api_key,
        max_retries=0,
        timeout=args.deadline,
    )
    model = args.model or (await client.models.list()).data[0].id
    before = rss_kib(args.pid)
    refs = {}
    for p in PROMPTS:
        refs[p] = await reference(client, model, p, args.max_tokens)
    sem = asyncio.Semaphore(args.concurrency)
    results = []
    warmup = args.warmup if args.warmup is not None else max(args.concurrency, args.requests // 10)
    samples = []  # (requests finished, VmRSS KiB)

    async def sample_rss():
        while True:
            r = rss_kib(args.pid)
            if r is not None:
                samples.append((len(results), r["VmRSS"]))
            await asyncio.sleep(0.25)

    sampler = asyncio.create_task(sample_rss()) if args.pid else None
    t0 = time.perf_counter()
    tasks = [
        one(client, model, i, PROMPTS[i % len(PROMPTS)], refs[PROMPTS[i % len(PROMPTS)]],
            args.max_tokens, sem, results)
        for i in range(args.requests)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.deadline)
    except asyncio.TimeoutError:
        pass
    wall = time.perf_counter() - t0
    after = rss_kib(args.pid)
    if sampler:
        sampler.cancel()
    if after:
        samples.append((len(results), after["VmRSS"]))
    warm = [kib for n, kib in samples if n >= warmup]
    rss_warm, rss_end = (warm[0], warm[-1]) if warm else (None, None)
    rss_growth_mib = (rss_end - rss_warm) / 1024 if warm else None
    rss_flat = rss_growth_mib is None or rss_growth_mib <= args.rss_tolerance_mib
    done = [r for r in results if r["ok"]]
    failures = [r for r in results if not r["ok"]]
    # Every request must report exactly once: a repeated index is a duplicate, an absent one
    # a loss (still running at the deadline, or dropped).
    seen = {}
    for r in results:
        seen[r["i"]] = seen.get(r["i"], 0) + 1
    duplicates = sum(c - 1 for c in seen.values())
    missing = sum(1 for i in range(args.requests) if i not in seen)
    ttfts = [r["ttft"] for r in done if r.get("ttft") is not None]
    totals = [r["total"] for r in done]
    summary = {
        "model": model,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "ok": len(done),
        "failed": len(failures),
        "duplicates": duplicates,
        "losses": missing,
        "wall_s": round(wall, 3),
        "requests_per_s": round(len(done) / wall, 3) if wall > 0 else None,
        "ttft_s": {"p50": pct(ttfts, 50), "p90": pct(ttfts, 90), "p99": pct(ttfts, 99),
                   "mean": statistics.mean(ttfts) if ttfts else None},
        "latency_s": {"p50": pct(totals, 50), "p90": pct(totals, 90), "p99": pct(totals, 99)},
        "rss_kib_before": before,
        "rss_kib_after": after,
        "rss_warmup_requests": warmup,
        "rss_kib_after_warmup": rss_warm,
        "rss_kib_max_after_warmup": max(warm) if warm else None,
        "rss_growth_after_warmup_mib": rss_growth_mib,
        "rss_flat": rss_flat,
        "first_failures": failures[:5],
    }
    print(json.dumps(summary, indent=2))
    await client.close()
    passed = not failures and missing == 0 and duplicates == 0 and rss_flat
    rss = lambda r: (r or {}).get("VmRSS")
    print(
        f"load test {'PASSED' if passed else 'FAILED'}: requests={args.requests} ok={len(done)} "
        f"failures={len(failures)} duplicates={duplicates} losses={missing} "
        f"rss_kib_before={rss(before)} rss_kib_after_warmup={rss_warm} rss_kib_after={rss(after)} "
        f"rss_flat={rss_flat} peak_rss_kib={(after or {}).get('VmHWM')} wall_s={wall:.1f}"
    )
    return 0 if passed else 1


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--model", default=None, help="default: the server's only model")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--deadline", type=float, default=600, help="seconds before giving up")
    ap.add_argument("--pid", type=int, default=None, help="server pid, for RSS through the run")
    ap.add_argument("--warmup", type=int, default=None,
                    help="finished requests after which RSS must stay flat "
                         "(default max(concurrency, requests/10))")
    ap.add_argument("--rss-tolerance-mib", type=float, default=8.0,
                    help="allowed RSS growth after warm-up")
    return ap.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse())))
