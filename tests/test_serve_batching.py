"""Continuous batching (genforge/serve/batching.py): streams decoded together in one forward
per turn give exactly the tokens each gives alone through `stream_text`, whatever their
settings, seeds, lengths and the turn they join at; and the server, with the official
openai client over a real loopback server, answers the same with and without batching."""
from __future__ import annotations

import threading

import pytest
import torch

from genforge.data.tokenizers import CharTokenizer
from genforge.generate.sampling import SamplingConfig, stream_text
from genforge.models.attention import KVCache
from genforge.models.llama import Llama, LlamaConfig
from genforge.models.transformer import GPT, GPTConfig
from genforge.serve.batching import ContinuousBatcher
from genforge.serve.engine import Limits

TOK = CharTokenizer("\n abcdefghijklmnopqrstuvwxyz.,:;!?ABCDEFGHIJKLMNOPQRSTUVWXYZ")

# (prompt, settings, turn it joins at): greedy and seeded sampling with every filter, stop
# strings and stop ids, no tokens at all, and streams long enough to fill a 24-position
# context (the rebuild rule) while others are mid-stream
STREAMS = [
    ("ROMEO:", dict(temperature=0.0, max_new_tokens=40), 0),
    ("a", dict(temperature=0.8, seed=1, max_new_tokens=30), 0),
    ("the king", dict(temperature=1.0, top_k=5, seed=2, max_new_tokens=25), 0),
    ("What?", dict(temperature=0.9, top_p=0.8, seed=3, max_new_tokens=35), 2),
    ("x", dict(temperature=0.7, repetition_penalty=1.5, seed=4, max_new_tokens=20), 3),
    ("Hello there", dict(temperature=1.2, top_k=10, top_p=0.9, seed=5, stop=["P!", "!a"], max_new_tokens=30), 1),
    ("stop", dict(temperature=0.0, repetition_penalty=1.3, stop_ids=TOK.encode("H"), max_new_tokens=30), 5),
    ("zero", dict(temperature=0.8, seed=6, max_new_tokens=0), 4),
    ("one", dict(temperature=0.8, seed=7, max_new_tokens=1), 4),
    ("Long prompt of twenty", dict(temperature=0.5, seed=8, max_new_tokens=40), 6),
]


def _models():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=24, n_layer=2, n_head=2, n_embd=32)).eval()
    llama = Llama(LlamaConfig(vocab_size=TOK.vocab_size, block_size=24, n_layer=2, n_head=4, n_kv_head=2,
                              d_model=32, intermediate=64)).eval()
    # larger weights than the init's: peaked, varied distributions (not near-uniform noise)
    with torch.no_grad():
        for m in (gpt, llama):
            for p in m.parameters():
                p.mul_(4.0 if p.dim() > 1 else 1.0)
    return {"gpt": gpt, "llama": llama}


MODELS = _models()


def _alone(model, prompt, settings):
    stats = {}
    text = "".join(stream_text(model, TOK, prompt, SamplingConfig(**settings), stats=stats))
    return text, stats


def _batched(model, streams):
    """Drive a batcher as the worker pool does (prefill, join, turns) with streams joining
    at their given turns; -> [(text, stats)] in stream order, and the batcher."""
    batcher = ContinuousBatcher(model)
    made = [(batcher.stream(TOK, p, SamplingConfig(**kw), {}), at) for p, kw, at in streams]
    texts = {id(s): [] for s, _ in made}
    waiting = list(made)
    turn = 0
    while waiting or batcher.active or batcher.joining:
        for s, at in [w for w in waiting if w[1] <= turn]:
            waiting.remove((s, at))
            texts[id(s)] += s.prefill()
            if not s.finished:
                batcher.join(s)
        stepped, cancelled = batcher.turn()
        assert not cancelled
        for s, pieces in stepped:
            texts[id(s)] += pieces
        batcher.release()
        turn += 1
        assert turn < 200
    return [("".join(texts[id(s)]), s.text.stats) for s, _ in made], batcher


@pytest.mark.parametrize("name", ["gpt", "llama"])
def test_batched_streams_equal_each_stream_alone(name):
    model = MODELS[name]
    got, batcher = _batched(model, STREAMS)
    for (prompt, kw, _), (text, stats) in zip(STREAMS, got):
        want_text, want_stats = _alone(model, prompt, kw)
        assert (text, stats) == (want_text, want_stats), (prompt, kw)
    assert batcher.rows / batcher.turns > 3  # the streams really were decoded together
    assert not batcher.active and batcher.scheduled is False


def test_rebuild_and_stop_paths_are_exercised():
    """The table above covers what it claims: a stream that outruns the context, one ended
    by a stop string, one by a stop id, one of max_tokens 0."""
    got, _ = _batched(MODELS["gpt"], STREAMS)
    stats = [s for _, s in got]
    assert len("ROMEO:") + stats[0]["completion_tokens"] > 24
    assert stats[5]["finish_reason"] == "stop" and stats[5]["completion_tokens"] < 30
    assert stats[6]["finish_reason"] == "stop" and stats[6]["completion_tokens"] < 30
    assert stats[7] == {"completion_tokens": 0, "finish_reason": "length"}


def test_per_row_static_cache_matches_eager_rows():
    """KVCache.static_view with per-row positions: each row written at its own position and
    attending over its own prefix gives each row's own eager logits."""
    model = MODELS["llama"]
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]]
    nxt = torch.tensor([[11], [12], [13]])
    with torch.inference_mode():
        want = [model.step(nxt[i:i + 1], model.step(torch.tensor([p]))[1])[0] for i, p in enumerate(prompts)]
        n_layer, n_kv, hs = model.cache_spec()
        ks = [torch.zeros(3, n_kv, 10, hs) for _ in range(n_layer)]
        vs = [torch.zeros(3, n_kv, 10, hs) for _ in range(n_layer)]
        for i, p in enumerate(prompts):
            _, c = model.step(torch.tensor([p]))
            for dst, src in zip(ks + vs, c.k + c.v):
                dst[i, :, :len(p)] = src[0, :, :len(p)]
        pos = torch.tensor([len(p) for p in prompts])
        got = model(nxt, KVCache.static_view(ks, vs, pos))[:, -1, :]
    torch.testing.assert_close(got, torch.cat(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="one token per row"):
        KVCache.static_view(ks, vs, pos).append(0, torch.zeros(3, n_kv, 2, hs), torch.zeros(3, n_kv, 2, hs))


# ---------------------------------------------------------------------------------------
# through the server


PROMPTS = ["ROMEO:", "JULIET:", "KING:", "Nurse:", "First Citizen:", "A", "What, ho!", "the", "O", "Be",
           "MERCUTIO:", "and so"]


def _ask(url, model, i):
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    kw = [dict(temperature=0.0), dict(temperature=0.9, seed=i), dict(temperature=1.0, top_p=0.8, seed=i),
          dict(temperature=0.8, seed=i, stop=["e"])][i % 4]
    if i % 2:  # streamed: the pieces joined
        chunks = client.completions.create(model=model, prompt=PROMPTS[i], max_tokens=24, stream=True, **kw)
        return "".join(c.choices[0].text for c in chunks if c.choices)
    return client.completions.create(model=model, prompt=PROMPTS[i], max_tokens=24, **kw).choices[0].text


@pytest.mark.parametrize("batching", [True, False])
def test_server_concurrent_streams_batched_equal_unbatched(serve_runs, batching):
    from serving import LiveServer

    answers = {}
    with LiveServer([serve_runs["tiny-gpt"], serve_runs["tiny-gru"]], Limits(batching=batching)) as srv:
        def run(i):
            answers[i] = _ask(srv.url, "tiny-gpt", i)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        m = srv.models["tiny-gpt"]
        assert (m.batcher is not None) == batching
        if batching:
            assert m.batcher.rows > m.batcher.turns  # several streams per forward
        assert srv.wait_idle()["pending"] == 0
        assert srv.models["tiny-gru"].batcher is None  # recurrent: per-request path
        # n > 1: the choices are streams of their own, seeds base, base + 1, ...
        from openai import OpenAI

        client = OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        r = client.completions.create(model="tiny-gpt", prompt="ROMEO:", n=3, max_tokens=12, seed=40)
        multi = [c.text for c in sorted(r.choices, key=lambda c: c.index)]
    model, tok = m.model, m.tokenizer
    for i, text in answers.items():
        kw = [dict(temperature=0.0), dict(temperature=0.9, seed=i), dict(temperature=1.0, top_p=0.8, seed=i),
              dict(temperature=0.8, seed=i, stop=["e"])][i % 4]
        assert text == "".join(stream_text(model, tok, PROMPTS[i], SamplingConfig(max_new_tokens=24, **kw))), i
    for k, text in enumerate(multi):
        assert text == "".join(stream_text(model, tok, "ROMEO:", SamplingConfig(max_new_tokens=12,
                                                                                 temperature=1.0, seed=40 + k)))
