"""Continuous batching: the decode steps of every active stream of one model in one forward.

A `ContinuousBatcher` per served decoder Transformer (GPT, Llama) keeps a slot-based KV cache:
per layer one (slots, n_kv_head, max_len, head_dim) buffer, row i holding the keys/values
of active stream i at its own length. Each turn it runs ONE forward over the last token of
every active stream, each row at its own position (`KVCache.static_view` with a (B,) `pos`:
row b writes its new key/value at pos[b] and attends over its own filled slots only), then
samples each row with that stream's own `TokenSampler` (its temperature, top-k, top-p,
repetition penalty and seeded generator) and turns the token into text with the stream's
own `TextAssembler` (stop strings, stop ids). Streams join between turns and leave when they
finish or their client goes away; the active rows stay packed at the front (a leaving row is
filled by moving a later one down), so a turn's forward covers rows 0..n-1 and positions
0..longest, never the whole buffer.

Admission (the prompt's forward, its "prefill") runs alone, B=1, as an ordinary job of the
worker pool, so a long prompt is prefilled by one worker while the other runs decode turns;
its cache is then copied into a free slot and the stream joins at the next turn.

Same tokens as the unbatched path (`stream_text`): the prefill is the very same call, each
row's sampling is the very same code on that row's logits, and the context-full rule
(`CausalDecoder.rebuild`) is applied to a stream alone, exactly when `step` would apply
it. Only the decode forward differs, by batching: a row's logits can differ from the
one-row forward in the last bits of float32 (matmul blocking, the masked cache tail), which
changes a token only at an exact tie (tests/test_serve_batching.py checks equality).
Orca (Yu et al. 2022, "Orca: A Distributed Serving System for Transformer-Based Generative
Models") calls this iteration-level scheduling.
"""
from __future__ import annotations

import threading
from typing import Any

import torch

from genforge.generate.sampling import (SamplingConfig, TextAssembler, TokenSampler,
                                        prompt_tensor)
from genforge.models.attention import KVCache


class BatchedStream:
    """One generated choice: its prompt, sampler, text assembler and place in the batch."""

    def __init__(self, batcher: "ContinuousBatcher", tokenizer: Any, prompt, cfg: SamplingConfig,
                 stats: dict):
        cfg.check_model(batcher.model)
        self.batcher, self.cfg = batcher, cfg
        self.prompt = prompt_tensor(tokenizer, prompt).to(batcher.device)
        self.sampler = TokenSampler(cfg, self.prompt)
        self.text = TextAssembler(tokenizer, cfg, stats)
        self.remaining = cfg.max_new_tokens
        self.cache: KVCache | None = None  # the prefill's cache, until it moves into a slot
        self.tokens: list[int] = []  # the ids whose keys/values the stream's cache holds
        self.last = 0  # the latest sampled token: the next turn's input
        self.slot = -1
        self.job: Any = None  # the worker pool's Job (cancellation flag, where pieces go)
        self.finished = False

    @property
    def pos(self) -> int:
        return len(self.tokens)

    def prefill(self) -> list[str]:
        """Run the prompt (alone, as `sample_tokens` does) and sample the first token."""
        if self.remaining == 0:
            self.finished = True
            return self.text.finish()
        with torch.inference_mode():
            logits, self.cache = self.batcher.model.step(self.prompt)
        self.tokens = self.prompt[0].tolist()
        return self.sample(logits)

    def sample(self, logits: torch.Tensor) -> list[str]:
        """The next token from this stream's logits (1, V) -> the text pieces it releases."""
        tok = int(self.sampler(logits)[0])
        self.remaining -= 1
        pieces = self.text.push(tok)
        if not self.text.done and self.remaining == 0:
            pieces += self.text.finish()
        self.finished = self.text.done
        self.last = tok
        return pieces


class ContinuousBatcher:
    """The slot cache and decode turns of one served model; used by the worker pool
    (genforge/serve/engine.py), which calls `turn()` from one worker at a time."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        p = next(p for p in model.parameters() if p.is_floating_point())
        self.device, self.dtype = p.device, p.dtype
        self.n_layer, self.n_kv_head, self.head_dim = model.cache_spec()
        self.k: list[torch.Tensor] = []  # per layer (slots, n_kv_head, max_len, head_dim)
        self.v: list[torch.Tensor] = []
        self.active: list[BatchedStream] = []  # stream in slot i = active[i]
        self.joining: list[BatchedStream] = []
        self.lock = threading.Lock()
        self.scheduled = False  # in the pool's ready queue or running a turn
        self.turns = 0
        self.rows = 0  # rows decoded, summed over turns (rows / turns = mean batch)

    def stream(self, tokenizer: Any, prompt, cfg: SamplingConfig, stats: dict) -> BatchedStream:
        return BatchedStream(self, tokenizer, prompt, cfg, stats)

    # ---- called by the pool, under its own threads

    def join(self, stream: BatchedStream) -> bool:
        """Queue a prefilled stream for the next turn; True when the batcher must be
        scheduled (it was idle)."""
        with self.lock:
            self.joining.append(stream)
            if self.scheduled:
                return False
            self.scheduled = True
            return True

    def release(self) -> bool:
        """After a turn: True when the batcher has streams left (schedule it again)."""
        with self.lock:
            self.scheduled = bool(self.active or self.joining)
            return self.scheduled

    def drop_all(self) -> list[BatchedStream]:
        """Every stream, removed (after a failed turn, which leaves the cache unknown)."""
        with self.lock:
            streams, self.active, self.joining = self.active + self.joining, [], []
        self.k, self.v = [], []
        return streams

    def turn(self) -> tuple[list[tuple[BatchedStream, list[str]]], list[BatchedStream]]:
        """One decode step for every active stream. Returns (stream, pieces) for each stream
        stepped (`stream.finished` says whether it has left) and the streams dropped because
        their client went away."""
        with self.lock:
            joining, self.joining = self.joining, []
        cancelled = [s for s in self.active + joining if s.job is not None and s.job.cancelled]
        self._keep([s for s in self.active if s not in cancelled])
        for s in joining:
            if s not in cancelled:
                self._admit(s)
        out = []
        ctx = self.model.context_size
        full = [s for s in self.active if s.pos + 1 > ctx]
        if full:  # context full: `step`'s rebuild, alone, exactly as the unbatched stream
            for s in full:
                with torch.inference_mode():
                    logits, cache = self.model.rebuild(torch.tensor([s.tokens], device=self.device),
                                                       torch.tensor([[s.last]], device=self.device))
                s.tokens = cache.tokens[0].tolist()
                self._write(s.slot, cache)
                out.append((s, s.sample(logits)))
            self._keep([s for s in self.active if s not in full] + full)  # rebuilt rows last
        batch = self.active[:len(self.active) - len(full)]
        if batch:
            n, length = len(batch), max(s.pos for s in batch) + 1
            self._fit(n, length)
            idx = torch.tensor([[s.last] for s in batch], device=self.device)
            pos = torch.tensor([s.pos for s in batch], device=self.device)
            ks = [k.narrow(0, 0, n).narrow(2, 0, length) for k in self.k]
            vs = [v.narrow(0, 0, n).narrow(2, 0, length) for v in self.v]
            with torch.inference_mode():
                logits = self.model(idx, KVCache.static_view(ks, vs, pos), last_only=True)[:, -1, :]
            self.turns += 1
            self.rows += n
            for i, s in enumerate(batch):
                s.tokens.append(s.last)
                out.append((s, s.sample(logits[i:i + 1])))
        self._keep([s for s in self.active if not s.finished])
        return out, cancelled

    # ---- the slot cache

    def _admit(self, s: BatchedStream) -> None:
        need = min(self.model.context_size, s.pos + s.remaining)
        self._fit(len(self.active) + 1, need)
        s.slot = len(self.active)
        self.active.append(s)
        self._write(s.slot, s.cache)
        s.cache = None

    def _write(self, slot: int, cache: KVCache) -> None:
        n = int(cache.pos)
        self._fit(slot + 1, n + 1)
        for dst, src in zip(self.k + self.v, cache.k + cache.v):
            dst[slot, :, :n] = src[0, :, :n]

    def _keep(self, streams: list[BatchedStream]) -> None:
        """Make `streams` the active ones, in this order, in slots 0..len-1."""
        moves = [(s.slot, i) for i, s in enumerate(streams) if s.slot != i]
        if moves:
            src = torch.tensor([a for a, _ in moves], device=self.device)
            dst = torch.tensor([b for _, b in moves], device=self.device)
            for buf in self.k + self.v:
                buf.index_copy_(0, dst, buf.index_select(0, src))  # gathered first: sources may be destinations
        for i, s in enumerate(streams):
            s.slot = i
        self.active = list(streams)

    def _fit(self, rows: int, length: int) -> None:
        """Grow the buffers (doubling, so growth costs O(1) copies per row/position
        amortized) to hold `rows` slots of `length` positions."""
        have_rows = self.k[0].size(0) if self.k else 0
        have_len = self.k[0].size(2) if self.k else 0
        if rows <= have_rows and length <= have_len:
            return
        new_rows = max(rows, 2 * have_rows, 4)
        new_len = self.model._cache_len(max(length, 2 * have_len if length > have_len else have_len))
        if new_len < length:
            raise ValueError(f"a stream needs {length} cache positions; the model's context is "
                             f"{self.model.context_size}")
        shape = (new_rows, self.n_kv_head, new_len, self.head_dim)
        for bufs in (self.k, self.v):
            old = list(bufs)
            bufs[:] = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(self.n_layer)]
            for dst, src in zip(bufs, old):
                dst[:src.size(0), :, :src.size(2)] = src


def batchable(m: Any) -> bool:
    """Whether a served text model's decode steps can be batched: a KV-cached decoder
    Transformer (recurrent models carry a hidden state; translation runs beam search)."""
    from genforge.models.decoding import CausalDecoder

    return (isinstance(m.model, CausalDecoder) and "recurrent" not in m.capabilities
            and "translation" not in m.capabilities)


__all__ = ["BatchedStream", "ContinuousBatcher", "batchable"]
