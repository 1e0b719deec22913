"""Reliability benchmark (issue 16): a sustained mixed load on `genforge serve`, with clients
that give up mid-request, and what it leaves behind in the server process.

The server runs as its own process (`genforge serve RUN...`, as a user starts it) over three
tiny runs (a GPT, an image classifier, a VAE) trained on first use into bench/out/reliability/.
`--clients` asyncio clients on 127.0.0.1 each loop, until `--seconds` have passed (and at most
`MAX_REQUESTS_PER_CLIENT` requests), over streaming and non-streaming completions, chats,
classifications and image generations; a fraction `--abandon` of the requests is given up
mid-request (the connection closed after a random 20-300 ms, or after the first streamed
chunk). A warm-up of the same mix comes first, so that lazily started threads (the server's
thread pool for plain endpoints) and first-use allocations are counted in the baseline.

Reported: requests by outcome (ok, abandoned, 429 busy, other 4xx, 5xx, transport errors),
latency of the completed ones, and the server process's threads, open files and resident
memory (from /proc/PID) after the warm-up and after the load, each once the server is idle.

  python bench/bench_reliability.py [--seconds 120] [--clients 32] [--abandon 0.1] [--workers 2]

tests/test_serve_reliability.py (marked slow) runs `soak` against an in-process server.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "reliability"
MAX_REQUESTS_PER_CLIENT = 100_000  # a bound besides the clock, so no loop can run away
KINDS = ("stream", "complete", "chat", "classify", "image")

# tiny runs: the benchmark measures the server's bookkeeping, not the models
RUNS = {
    "rel-gpt": ("language-model", {"model": "gpt", "max_steps": 30, "batch_size": 8, "eval_batches": 2,
                                   "model.block_size": 64, "model.n_layer": 1, "model.n_head": 2,
                                   "model.n_embd": 32, "sample_tokens": 5}),
    "rel-digits": ("image-classify", {"model": "mlp", "data": "digits", "max_steps": 20, "batch_size": 32,
                                      "model.hidden": (32,), "eval_batches": 2}),
    "rel-vae": ("image-generate", {"model": "vae", "data": "fashion-mnist", "max_steps": 2, "batch_size": 8,
                                   "train_limit": 128, "eval_batches": 1, "sample_grid": 4,
                                   "model.hidden": 16, "model.latent": 4}),
}


def proc_stats(pid: int) -> dict:
    """Threads, open file descriptors and resident memory (MB) of process `pid` (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"threads": int(fields["Threads"]), "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "rss_mb": int(fields["VmRSS"].split()[0]) / 1024}


def _png(seed: int) -> str:
    from PIL import Image

    rng = random.Random(seed)
    im = Image.new("L", (8, 8))
    im.putdata([rng.randrange(256) for _ in range(64)])
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _request(kind: str, models: dict, rng: random.Random) -> tuple[str, dict]:
    seed = rng.randrange(1 << 30)
    if kind in ("stream", "complete"):
        return "/v1/completions", {"model": models["text"], "prompt": "ROMEO:", "max_tokens": 24,
                                   "stream": kind == "stream", "seed": seed}
    if kind == "chat":
        return "/v1/chat/completions", {"model": models["text"], "max_tokens": 16, "seed": seed,
                                        "messages": [{"role": "user", "content": "Speak, friend."}]}
    if kind == "classify":
        return "/v1/classifications", {"model": models["classify"], "input": [_png(seed), _png(seed + 1)]}
    return "/v1/images/generations", {"model": models["image"], "prompt": "", "n": 1, "seed": seed}


async def _one(client: httpx.AsyncClient, url: str, kind: str, models: dict, rng: random.Random,
               abandon: float, tally: dict) -> None:
    path, body = _request(kind, models, rng)
    give_up = rng.random() < abandon
    t0 = time.perf_counter()

    async def call() -> int:
        if body.get("stream"):
            async with client.stream("POST", url + path, json=body) as r:
                async for line in r.aiter_lines():
                    if give_up and line.startswith("data: {"):
                        return -1  # leave after the first chunk: the context closes the connection
                return r.status_code
        r = await client.post(url + path, json=body)
        return r.status_code

    try:
        if give_up and not body.get("stream"):
            status = await asyncio.wait_for(call(), rng.uniform(0.02, 0.3))
        else:
            status = await call()
    except asyncio.TimeoutError:
        status = -1
    except httpx.HTTPError as e:
        tally["errors"] += 1
        tally.setdefault("error_kinds", {}).setdefault(e.__class__.__name__, 0)
        tally["error_kinds"][e.__class__.__name__] += 1
        return
    if status == -1:
        tally["abandoned"] += 1
    elif status == 200:
        tally["ok"] += 1
        tally["latency"].append(time.perf_counter() - t0)
    elif status == 429:
        tally["429"] += 1
    elif status >= 500:
        tally["5xx"] += 1
    else:
        tally["4xx"] += 1
    tally["by_kind"][kind] = tally["by_kind"].get(kind, 0) + 1


async def _load(url: str, seconds: float, clients: int, abandon: float, models: dict, seed: int) -> dict:
    tally = {"ok": 0, "abandoned": 0, "429": 0, "4xx": 0, "5xx": 0, "errors": 0, "latency": [], "by_kind": {}}
    deadline = time.monotonic() + seconds

    async def client_loop(i: int) -> None:
        rng = random.Random(seed * 1000 + i)
        # a fresh connection per abandoned request; otherwise kept alive, as real clients do
        async with httpx.AsyncClient(timeout=120) as client:
            for n in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= deadline:
                    return
                await _one(client, url, KINDS[(i + n) % len(KINDS)], models, rng, abandon, tally)

    await asyncio.gather(*(client_loop(i) for i in range(clients)))
    return tally


def _settle(url: str, timeout: float = 30.0) -> dict:
    """Wait until the server has no generation pending, then a moment for sockets to close."""
    deadline = time.time() + timeout
    while True:
        workers = httpx.get(url + "/health", timeout=10).json()["workers"]
        if workers["pending"] == 0 or time.time() > deadline:
            break
        time.sleep(0.1)
    time.sleep(1.0)
    return workers


def soak(url: str, seconds: float, clients: int, abandon: float, pid: int, models: dict,
         warmup: float | None = None, seed: int = 0) -> dict:
    """Warm up, measure the server process `pid`, run the mixed load, measure again."""
    warmup = min(15.0, max(3.0, seconds / 8)) if warmup is None else warmup
    asyncio.run(_load(url, warmup, clients, abandon, models, seed + 1))
    _settle(url)
    before = proc_stats(pid)
    t0 = time.perf_counter()
    tally = asyncio.run(_load(url, seconds, clients, abandon, models, seed))
    wall = time.perf_counter() - t0
    workers = _settle(url)
    after = proc_stats(pid)
    lat = sorted(tally.pop("latency"))
    return {**tally, "seconds": round(wall, 1), "clients": clients, "abandon": abandon,
            "requests": tally["ok"] + tally["abandoned"] + tally["429"] + tally["4xx"] + tally["5xx"] + tally["errors"],
            "p50_s": statistics.median(lat) if lat else float("nan"),
            "p95_s": lat[int(0.95 * (len(lat) - 1))] if lat else float("nan"),
            "threads_before": before["threads"], "threads_after": after["threads"],
            "fds_before": before["fds"], "fds_after": after["fds"],
            "rss_before_mb": before["rss_mb"], "rss_after_mb": after["rss_mb"],
            "pending_after": workers["pending"], "cancelled": workers["cancelled"]}


def table(results: list[dict]) -> str:
    head = ("| seconds | clients | requests | ok | abandoned | 429 | other 4xx | 5xx | transport errors "
            "| p50 / p95 s | threads before -> after | open files before -> after | RSS MB before -> after |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        rows.append(f"| {r['seconds']:.0f} | {r['clients']} | {r['requests']} | {r['ok']} | {r['abandoned']} "
                    f"| {r['429']} | {r['4xx']} | {r['5xx']} | {r['errors']} | {r['p50_s']:.2f} / {r['p95_s']:.2f} "
                    f"| {r['threads_before']} -> {r['threads_after']} | {r['fds_before']} -> {r['fds_after']} "
                    f"| {r['rss_before_mb']:.0f} -> {r['rss_after_mb']:.0f} "
                    f"({100 * (r['rss_after_mb'] / r['rss_before_mb'] - 1):+.1f}%) |")
    return "\n".join(rows)


def _train_runs() -> list[Path]:
    from genforge.config import make_config
    from genforge.recipes import get_recipe
    from genforge.train.trainer import fit

    paths = []
    for name, (recipe, ov) in RUNS.items():
        path = OUT / name
        if not (path / "model.safetensors").is_file():
            fit(recipe, make_config(get_recipe(recipe), {**ov, "plots": False}), path, log=lambda s: None)
        paths.append(path)
    return paths


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=120.0, help="length of the measured load")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--abandon", type=float, default=0.1, help="fraction of requests given up mid-way")
    ap.add_argument("--workers", type=int, default=2, help="the server's model threads")
    args = ap.parse_args()
    runs = _train_runs()
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "genforge", "serve", *map(str, runs), "--port", str(port),
                               "--workers", str(args.workers)], cwd=ROOT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                httpx.get(url + "/health", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.time() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
        res = soak(url, args.seconds, args.clients, args.abandon, server.pid,
                   {"text": "rel-gpt", "classify": "rel-digits", "image": "rel-vae"})
    finally:
        server.terminate()
        server.wait(30)
    print(table([res]))
    print(json.dumps({k: v for k, v in res.items()}, default=str))


if __name__ == "__main__":
    main()
