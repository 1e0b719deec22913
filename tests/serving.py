"""Helpers for the serving tests: tiny real runs, and a real uvicorn server on 127.0.0.1."""
from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from genforge.config import make_config
from genforge.recipes import get_recipe
from genforge.serve.app import create_app
from genforge.serve.engine import Limits, load_models
from genforge.train.trainer import fit

# run name -> (recipe, overrides): a few steps each, on slices of the real datasets
RUNS = {
    "tiny-gpt": ("language-model", {"model": "gpt", "max_steps": 30, "batch_size": 8, "eval_batches": 2,
                                     "eval_every": 30, "model.block_size": 64, "model.n_layer": 1,
                                     "model.n_head": 2, "model.n_embd": 32, "sample_tokens": 5}),
    "tiny-gru": ("language-model", {"model": "gru", "max_steps": 2, "batch_size": 4, "eval_batches": 1,
                                     "model.block_size": 16, "model.n_layer": 1, "model.embed_size": 8,
                                     "model.hidden_size": 16, "sample_tokens": 5}),
    "tiny-vae": ("image-generate", {"model": "vae", "data": "fashion-mnist", "max_steps": 2, "batch_size": 8,
                                     "train_limit": 128, "eval_batches": 1, "sample_grid": 4,
                                     "model.hidden": 16, "model.latent": 4}),
    "tiny-diffusion": ("image-generate", {"model": "diffusion", "data": "fashion-mnist", "max_steps": 1,
                                           "batch_size": 4, "train_limit": 64, "eval_batches": 1,
                                           "sample_grid": 2, "sample_steps": 2, "model.base_channels": 8,
                                           "model.timesteps": 20}),
    "tiny-sentiment": ("text-classify", {"model": "bag", "data": "rt-polarity", "max_steps": 2, "batch_size": 8,
                                          "train_limit": 400, "eval_batches": 2, "max_len": 20,
                                          "model.emb_dim": 16}),
    "tiny-digits": ("image-classify", {"model": "mlp", "data": "digits", "max_steps": 20, "batch_size": 32,
                                        "model.hidden": (32,), "eval_batches": 2}),
}


def train_runs(root: Path, names=tuple(RUNS)) -> dict[str, Path]:
    out = {}
    for name in names:
        rname, ov = RUNS[name]
        cfg = make_config(get_recipe(rname), {**ov, "plots": False})
        fit(rname, cfg, root / name, log=lambda s: None)
        out[name] = root / name
    return out


class LiveServer:
    """create_app(...) under a real uvicorn server on 127.0.0.1 (own thread, own loop)."""

    def __init__(self, runs: list[Path], limits: Limits | None = None, api_key: str | None = None,
                 quantize: str | None = None):
        self.models = load_models(runs, quantize=quantize)
        self.app = create_app(self.models, limits or Limits(), api_key)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    @property
    def pool(self):
        return self.app.state.pool

    def wait_idle(self, timeout: float = 10.0) -> dict:
        """Poll /health until no generation is pending; returns the worker stats."""
        deadline = time.time() + timeout
        while True:
            stats = httpx.get(self.url + "/health").json()["workers"]
            if stats["pending"] == 0 or time.time() > deadline:
                return stats
            time.sleep(0.05)
