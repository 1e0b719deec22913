"""Serving benchmark (issue 7): time to first token and tokens/s for 1, 8 and 32 concurrent
streaming clients of `genforge serve` on a trained `gpt-shakespeare` run.

The server runs as its own process (`genforge serve RUN`), exactly as a user starts it; the
clients are asyncio + httpx streams in this process, each asking /v1/completions for
`--tokens` new tokens with stream=true. Reported per level: failed requests, time to first
token (first non-empty text chunk; median and p95), per-stream tokens/s, and the aggregate
tokens/s over the level's wall time (completion tokens from the server's usage counts).

  python bench/bench_serve.py [RUN] [--levels 1,8,32] [--tokens 128] [--workers 2] [--compare]

--compare starts two servers, `--no-batching` (one forward per stream, the path before
continuous batching) and the default (one batched forward per step for all streams), and runs
each level on one then the other, alternating, so both see the same machine noise.

RUN defaults to bench/out/lm/gpt-shakespeare (written by `bench/bench_lm.py gpt15`), or any
run trained with `genforge train gpt-shakespeare`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


async def one_stream(client: httpx.AsyncClient, url: str, model: str, tokens: int, seed: int) -> dict:
    body = {"model": model, "prompt": "ROMEO:", "max_tokens": tokens, "stream": True,
            "temperature": 0.8, "seed": seed, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, usage, status = None, None, None
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            status = r.status_code
            if r.status_code != 200:
                await r.aread()
                return {"ok": False, "error": f"HTTP {r.status_code}: {r.text[:200]}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                d = json.loads(line[6:])
                if "error" in d:
                    return {"ok": False, "error": d["error"]["message"]}
                if d["choices"] and d["choices"][0]["text"] and first is None:
                    first = time.perf_counter() - t0
                if d.get("usage") and not d["choices"]:
                    usage = d["usage"]
    except httpx.HTTPError as e:
        return {"ok": False, "error": f"{e.__class__.__name__}: {e} (status {status})"}
    total = time.perf_counter() - t0
    n = usage["completion_tokens"] if usage else 0
    return {"ok": n == tokens and first is not None, "ttft": first, "total": total, "tokens": n,
            "error": None if n == tokens else f"got {n} tokens"}


def start_server(run: Path, workers: int, mode: str):
    """`genforge serve RUN` as its own process -> (process, url, first model id)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "genforge", "serve", str(run), "--port", str(port),
                               "--workers", str(workers), "--max-pending", "64", mode],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while True:
        try:
            health = httpx.get(url + "/health", timeout=2).json()
            return server, url, health["models"][0]
        except httpx.HTTPError:
            if server.poll() is not None or time.time() > deadline:
                server.kill()
                sys.exit("error: the server did not start:\n" + server.communicate()[0])
            time.sleep(0.3)


async def level(url: str, model: str, clients: int, tokens: int) -> dict:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one_stream(client, url, model, tokens, i) for i in range(clients)))
        wall = time.perf_counter() - t0
    ok = [r for r in res if r["ok"]]
    ttft = sorted(r["ttft"] for r in ok)
    return {"clients": clients, "failed": len(res) - len(ok), "errors": [r["error"] for r in res if not r["ok"]][:3],
            "ttft_p50": statistics.median(ttft) if ttft else float("nan"),
            "ttft_p95": ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))] if ttft else float("nan"),
            "stream_tps": statistics.median(r["tokens"] / r["total"] for r in ok) if ok else 0.0,
            "agg_tps": sum(r["tokens"] for r in ok) / wall, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", type=Path, default=ROOT / "bench" / "out" / "lm" / "gpt-shakespeare")
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per request")
    ap.add_argument("--workers", type=int, default=2, help="server worker threads")
    ap.add_argument("--no-batching", action="store_true", help="serve with --no-batching")
    ap.add_argument("--compare", action="store_true",
                    help="--no-batching and batching servers side by side, levels alternating")
    args = ap.parse_args()
    if not (args.run / "config.json").is_file():
        sys.exit(f"error: {args.run} is not a trained run; train one with `genforge train gpt-shakespeare "
                 f"--out {args.run}` or `python bench/bench_lm.py gpt15`")
    modes = ["--no-batching", "--batching"] if args.compare else \
        ["--no-batching" if args.no_batching else "--batching"]
    servers = {}
    rows = []
    try:
        for mode in modes:
            servers[mode] = start_server(args.run, args.workers, mode)
        model = servers[modes[0]][2]
        for mode in modes:
            asyncio.run(level(servers[mode][1], model, 2, 16))  # warm-up: first-call allocations
        for c in args.levels.split(","):
            for mode in modes:
                rows.append({**asyncio.run(level(servers[mode][1], model, int(c), args.tokens)), "mode": mode})
    finally:
        for server, _, _ in servers.values():
            server.terminate()
            server.wait(30)
    import torch

    print(f"\n# genforge serve: {args.run.name} ({model}), {args.tokens} new tokens per request, prompt 'ROMEO:', "
          f"stream=true, temperature 0.8")
    print(f"# {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, server --workers {args.workers} "
          f"({max(1, (os.cpu_count() or 1) // args.workers)} torch thread(s) each), clients in a second process on the same cores, "
          f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC, load avg {os.getloadavg()[0]:.2f}")
    print(f"{'server':>14}  {'concurrent streams':>18}  {'failed':>6}  {'TTFT p50':>9}  {'TTFT p95':>9}  "
          f"{'tokens/s per stream':>19}  {'tokens/s total':>14}  {'wall':>7}")
    for r in rows:
        print(f"{r['mode']:>14}  {r['clients']:>18}  {r['failed']:>6}  {r['ttft_p50'] * 1e3:>7.0f}ms  {r['ttft_p95'] * 1e3:>7.0f}ms  "
              f"{r['stream_tps']:>19.1f}  {r['agg_tps']:>14.1f}  {r['wall']:>6.1f}s")
        for e in r["errors"]:
            print(f"    failure: {e}")


if __name__ == "__main__":
    main()
