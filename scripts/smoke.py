"""Wick's device smoke check, standard library only (it runs where nothing can be installed).

Starts `wick serve` on 127.0.0.1 (port 0), then:
1. agreement: for each case of fixtures/chat-ref.json (llama.cpp's greedy output for our GGUF),
   teacher-forced through the server: the prompt plus the first k reference tokens go in as
   token ids, and the reference token's log-probability must be within 0.5 of the best one's
   (log-probabilities share one normaliser, so this is the logit gap, the same bound as the
   engine's teacher-forced test);
2. load: 1, 16 and 64 concurrent clients, each sending chat requests of a fixed length, for a
   fixed time: requests, output tokens/s, latency p50/p99;
and writes one JSON report.

Usage: python3 scripts/smoke.py --wick BIN --model GGUF --device cuda:0 --out report.json
       [--generic-path] [--seconds 20] [--max-tokens 64]
"""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
import wickserver  # noqa: E402 - the test suite's server start, shared
GAP_LIMIT = 0.5


def post(base, path, body, timeout=600):
    req = urllib.request.Request(f"{base}{path}", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def start(args):
    extra = ["--device", args.device, "--kv-cache-memory", str(args.kv_cache_memory)]
    if args.generic_path:
        extra.append("--generic-path")
    return wickserver.start(args.wick, args.model, *extra)


def agreement(base):
    """Teacher-forced gaps: `logit_bias` makes the reference token the one chosen, and the
    reported log-probabilities are the model's own (before bias), next to the best one's."""
    cases = json.loads((ROOT / "fixtures" / "chat-ref.json").read_text())["cases"]
    report = []
    for case in cases:
        prompt = post(base, "/tokenize", {"messages": [
            {"role": "user", "content": case["prompt"]}]})["tokens"]
        ref = case["ids"]
        worst = 0.0
        for k, want in enumerate(ref):
            r = post(base, "/v1/completions", {
                "model": "smol", "prompt": prompt + ref[:k], "max_tokens": 1,
                "temperature": 0, "logprobs": 1, "logit_bias": {str(want): 100}})
            lp = r["choices"][0]["logprobs"]
            best = max(lp["top_logprobs"][0].values())
            worst = max(worst, best - lp["token_logprobs"][0])
        report.append({"prompt": case["prompt"], "tokens": len(ref),
                       "largest_gap": round(worst, 4), "ok": worst <= GAP_LIMIT})
    return report


def load(base, clients, seconds, max_tokens):
    prompts = [f"Write a short story about {w}." for w in
               ("a lighthouse", "a robot", "the sea", "a garden", "a city", "winter",
                "a violin", "a train")]
    results, lock = [], threading.Lock()
    stop_at = time.time() + seconds

    def client(i):
        n = 0
        while time.time() < stop_at:
            body = {"model": "smol", "max_tokens": max_tokens, "temperature": 0.8,
                    "seed": i * 1000 + n, "ignore_eos": True,
                    "messages": [{"role": "user", "content": prompts[(i + n) % len(prompts)]}]}
            t0 = time.time()
            try:
                r = post(base, "/v1/chat/completions", body)
                with lock:
                    results.append((time.time() - t0, r["usage"]["completion_tokens"], t0))
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                with lock:
                    results.append((time.time() - t0, None, t0))
                print(f"client {i}: {e}", file=sys.stderr)
            n += 1

    t_start = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t_start
    ok = [r for r in results if r[1] is not None]
    lat = sorted(r[0] for r in ok)
    tokens = sum(r[1] for r in ok)
    pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 3) if lat else None
    return {"clients": clients, "seconds": round(wall, 2), "requests": len(ok),
            "failed": len(results) - len(ok), "output_tokens": tokens,
            "output_tokens_per_s": round(tokens / wall, 1),
            "latency_p50_s": pick(0.5), "latency_p99_s": pick(0.99),
            "mean_latency_s": round(statistics.mean(lat), 3) if lat else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wick", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--generic-path", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--kv-cache-memory", type=int, default=2048)
    args = ap.parse_args()

    started = time.time()
    proc, base = start(args)
    report = {"device": args.device, "generic_path": args.generic_path or args.device != "cpu",
              "load_s": round(time.time() - started, 2)}
    try:
        with urllib.request.urlopen(f"{base}/info") as r:
            report["info"] = json.load(r)
        report["agreement"] = agreement(base)
        report["load"] = [load(base, int(c), args.seconds, args.max_tokens)
                          for c in args.clients.split(",")]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    report["ok"] = (all(a["ok"] for a in report["agreement"])
                    and all(l["failed"] == 0 and l["requests"] > 0 for l in report["load"]))
    Path(args.out).write_text(json.dumps(report, indent=2))
    for a in report["agreement"]:
        print(f"agreement {a['prompt']!r}: largest gap {a['largest_gap']} "
              f"({a['tokens']} tokens) {'ok' if a['ok'] else 'FAILED'}")
    for l in report["load"]:
        print(f"load {l['clients']:>2} clients: {l['output_tokens_per_s']} output tokens/s, "
              f"{l['requests']} requests, p50 {l['latency_p50_s']} s, p99 {l['latency_p99_s']} s")
    print(f"report: {args.out} ({'ok' if report['ok'] else 'FAILED'})")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
