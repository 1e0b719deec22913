"""Generation for decoder-only language models over a `KVCache`, shared by every such family
(GPT, Llama): `new_state`, `step` (with the context-rebuild rule) and the compiled one-token step.

A model mixes in `CausalDecoder` and provides
  - `forward(idx, cache=None, last_only=False) -> logits (B, T, vocab)` ((B, 1, vocab) with
    last_only: the head on the last position only): with a cache, idx are the tokens that
    follow the cached ones; their keys/values are appended to it and `cache.advance(idx)` is
    called. With a static cache (`cache.static`, `cache.pos` a 0-d tensor) the forward must
    keep every shape fixed: positions from `cache.positions(T, device)`, no Python test of
    `cache.pos`.
  - `cache_spec() -> (n_layer, n_kv_head, head_dim)`: the geometry of its cache;
  - `context_size`: the number of positions it attends over (the cache's length).

There is one decode computation: the compiled step runs the model's own forward over a
`KVCache.static_view` of the cache buffers (one token over the whole preallocated buffer, the
unfilled tail masked), so eager, cached and compiled decoding cannot drift apart.
"""
from __future__ import annotations

import functools

import torch

from genforge.models.attention import KVCache

# smallest cache `new_state` allocates: below this, growing costs more than the memory saved
MIN_CACHE_LEN = 64


class CausalDecoder:
    """Mixin for `nn.Module` decoder LMs: KV-cached, optionally compiled, generation."""

    # declared capability, read by the sampler: `step(..., compiled=True)` is available
    supports_compile = True

    def cache_spec(self) -> tuple[int, int, int]:
        raise NotImplementedError(f"{type(self).__name__} must define cache_spec() -> "
                                  "(n_layer, n_kv_head, head_dim) to use CausalDecoder")

    def new_state(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        """An empty cache on the model's device and dtype, for `max_len` positions rounded up
        to a power of two (at least MIN_CACHE_LEN) and capped at `context_size`; None: the
        whole context.

        A cache sized to what a generation needs, not to the context: a pretrained model's
        context is long (SmolLM2: 8,192 positions = ~377 MB per batch row in fp32), most
        generations use a few hundred. Rounding keeps the number of distinct cache shapes,
        hence of compiled decode graphs, to a handful."""
        n_layer, n_kv_head, head_dim = self.cache_spec()
        p = next(p for p in self.parameters() if p.is_floating_point())
        return KVCache(n_layer, batch, n_kv_head, self._cache_len(max_len), head_dim,
                       p.device, p.dtype)

    def _cache_len(self, needed: int | None) -> int:
        ctx = self.context_size
        if needed is None or needed >= ctx:
            return ctx
        return min(ctx, max(MIN_CACHE_LEN, 1 << (max(needed, 1) - 1).bit_length()))

    def _grown(self, state: KVCache, needed: int) -> KVCache:
        """A copy of `state` with room for `needed` positions (doubling at least: appending
        token by token then costs O(1) copies per token, amortized)."""
        bigger = self.new_state(state.batch, max(needed, 2 * state.max_len))
        for old, new in zip(state.k + state.v, bigger.k + bigger.v):
            new[:, :, :state.pos] = old[:, :, :state.pos]
        bigger.pos, bigger.tokens, bigger.cross = state.pos, state.tokens, state.cross
        return bigger

    @torch.no_grad()
    def step(self, idx: torch.Tensor, state: KVCache | None = None,
             compiled: bool = False) -> tuple[torch.Tensor, KVCache]:
        """Feed new tokens idx (B, T); return logits of the last one (B, vocab) and the cache.

        Without a `state`, the cache starts at the prompt's size (rounded up) and doubles
        when full, up to the context (`new_state(batch, max_len)` preallocates instead, for a
        caller that knows the length it needs).

        When the context is full the cache is rebuilt from the last half of the context
        (positions are absolute, so old keys cannot simply be shifted); this costs one
        half-context forward every context_size/2 tokens instead of one per token.

        `compiled=True` runs single-token steps through `compiled_decode_one()` (the same
        forward over a static view of the cache, compiled once per batch size and model
        shape; the first call takes seconds). Prompts (T > 1) always run eagerly."""
        ctx = self.context_size
        if state is None:
            state = self.new_state(idx.size(0), idx.size(1))
        if state.pos + idx.size(1) > ctx:
            return self.rebuild(state.tokens, idx)
        if state.pos + idx.size(1) > state.max_len:
            state = self._grown(state, state.pos + idx.size(1))
        if compiled and idx.size(1) == 1 and not self.training:
            from torch._dynamo.exc import FailOnRecompileLimitHit

            pos = torch.tensor(state.pos, device=idx.device)
            try:
                logits = compiled_decode_one()(self, idx, pos, state.k, state.v)
            except FailOnRecompileLimitHit:
                pass  # one graph per batch size / model shape up to dynamo's limit; then eager
            else:
                state.advance(idx)
                return logits, state
        logits = self(idx, state, last_only=True)
        return logits[:, -1, :], state

    def rebuild(self, tokens: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, KVCache]:
        """The context-full rule of `step`: new tokens idx (B, T) that do not fit after the
        cached `tokens` (B, pos) restart the cache from the last half of the context, ending
        with idx. Returns the last logits (B, vocab) and the new cache (continuous batching
        applies the same rule to one stream of a batch)."""
        ctx = self.context_size
        keep = max(ctx // 2 - idx.size(1), 0)
        tail = torch.cat([tokens, idx], dim=1)[:, -(keep + idx.size(1)):]
        tail = tail[:, -ctx:]
        state = self.new_state(idx.size(0))  # a generation this long fills the context
        return self(tail, state, last_only=True)[:, -1, :], state

    def _decode_one(self, tok: torch.Tensor, pos: torch.Tensor, ks: list[torch.Tensor],
                    vs: list[torch.Tensor]) -> torch.Tensor:
        """One new token per row, tok (B, 1), at position `pos` (a 0-d tensor), through the
        model's forward over the whole preallocated buffers ks, vs with the unfilled tail
        masked: every shape is fixed, so torch.compile builds it once and fuses the ~100 small
        ops of a decode step (on a CPU their per-op dispatch, not arithmetic, is most of a
        token's cost). Writes the token's keys/values into ks, vs at `pos`."""
        return self(tok, KVCache.static_view(ks, vs, pos), last_only=True)[:, -1, :]


@functools.cache
def compiled_decode_one():
    """`CausalDecoder._decode_one` through torch.compile, shared by every model (parameters
    are inputs of the compiled graph); compiled on first use for each batch size and model
    shape. fullgraph: a graph break would silently bring back the per-op dispatch cost."""
    return torch.compile(CausalDecoder._decode_one, dynamic=False, fullgraph=True)


__all__ = ["CausalDecoder", "MIN_CACHE_LEN", "compiled_decode_one"]
