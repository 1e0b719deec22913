"""The OpenAI-compatible server, live on 127.0.0.1 under real uvicorn, driven by the official
`openai` client (and httpx where the client has no method: classifications, raw errors)."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import openai
import pytest
import torch
from PIL import Image

from genforge.generate.sampling import SamplingConfig, generate_text
from genforge.serve.chat import PLAIN
from genforge.serve.engine import Limits
from serving import LiveServer


@pytest.fixture(scope="module")
def runs(serve_runs):
    return serve_runs


@pytest.fixture(scope="module")
def server(runs):
    with LiveServer(list(runs.values()), Limits(workers=2, max_pending=16, max_tokens=4000)) as s:
        yield s


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _oracle(server, prompt: str, **kw) -> str:
    """What the model itself generates for these settings (no server in between)."""
    m = server.models["tiny-gpt"]
    return generate_text(m.model, m.tokenizer, prompt, SamplingConfig(**kw))


# ---------------------------------------------------------------------------------------
# text


def test_models_list(client, runs):
    ids = {m.id for m in client.models.list().data}
    assert ids == set(runs)
    m = client.models.retrieve("tiny-gpt")
    assert m.owned_by == "genforge" and m.model_extra["genforge"]["context_length"] == 64
    assert m.model_extra["genforge"]["max_prompt_tokens"] == 64  # the GPT's context
    assert client.models.retrieve("tiny-gru").model_extra["genforge"]["max_prompt_tokens"] == 4096
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_completion_matches_the_model(client, server):
    r = client.completions.create(model="tiny-gpt", prompt="ROMEO:", max_tokens=25, temperature=0.9,
                                  top_p=0.95, seed=7)
    text = r.choices[0].text
    assert text == _oracle(server, "ROMEO:", max_new_tokens=25, temperature=0.9, top_p=0.95, seed=7)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 6 and r.usage.completion_tokens == 25 and r.usage.total_tokens == 31
    assert r.object == "text_completion" and r.model == "tiny-gpt" and r.id.startswith("cmpl-")
    # genforge's extension parameters travel in extra_body
    r2 = client.completions.create(model="tiny-gpt", prompt="ROMEO:", max_tokens=25, seed=7,
                                   extra_body={"top_k": 1})
    assert r2.choices[0].text == _oracle(server, "ROMEO:", max_new_tokens=25, temperature=0.0)


def test_completion_stream_equals_non_stream(client):
    kw = dict(model="tiny-gpt", prompt="JULIET:", max_tokens=40, temperature=1.0, seed=3)
    whole = client.completions.create(**kw).choices[0].text
    chunks = list(client.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == whole
    assert sum(1 for p in pieces if p) > 5  # it really arrived piece by piece
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 40 and chunks[-1].usage.prompt_tokens == 7


def test_stop_strings(client, server):
    greedy = _oracle(server, "ROMEO:", max_new_tokens=30, temperature=0.0)
    stop = greedy[12:14]
    r = client.completions.create(model="tiny-gpt", prompt="ROMEO:", max_tokens=30, temperature=0,
                                  stop=[stop, "\u0001never"])
    assert r.choices[0].text == greedy[:greedy.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_n_choices_and_prompt_lists(client):
    r = client.completions.create(model="tiny-gpt", prompt=["A", "B"], n=2, max_tokens=10, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert len({c.text for c in r.choices}) == 4  # distinct seeds per choice
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == 40
    again = client.completions.create(model="tiny-gpt", prompt=["A", "B"], n=2, max_tokens=10, seed=1)
    assert [c.text for c in again.choices] == [c.text for c in r.choices]
    echo = client.completions.create(model="tiny-gpt", prompt="A", max_tokens=3, seed=1, echo=True)
    assert echo.choices[0].text == "A" + r.choices[0].text[:3]


def test_chat_uses_the_template(client, server):
    msgs = [{"role": "system", "content": "Speak as a king."}, {"role": "user", "content": "Who goes there?"}]
    r = client.chat.completions.create(model="tiny-gpt", messages=msgs, max_tokens=12, seed=5, temperature=0.7)
    prompt = PLAIN.render([("system", "Speak as a king."), ("user", "Who goes there?")])
    assert prompt.endswith("User: Who goes there?\nAssistant:")
    want = _oracle(server, prompt, max_new_tokens=12, seed=5, temperature=0.7, stop=list(PLAIN.stop))
    msg = r.choices[0].message
    assert msg.role == "assistant" and msg.content == want
    assert r.usage.prompt_tokens == len(server.models["tiny-gpt"].tokenizer.encode(prompt))
    assert r.object == "chat.completion"

    stream = client.chat.completions.create(model="tiny-gpt", messages=msgs, max_tokens=12, seed=5,
                                            temperature=0.7, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_recurrent_model_serves_too(client):
    r = client.chat.completions.create(model="tiny-gru", messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=8, seed=0)
    assert r.usage.completion_tokens == 8 or r.choices[0].finish_reason == "stop"


# ---------------------------------------------------------------------------------------
# images and classification


def _png(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def test_image_generation(client):
    r = client.images.generate(model="tiny-vae", prompt="sneaker", n=3, response_format="b64_json")
    assert len(r.data) == 3
    for d in r.data:
        im = _png(d.b64_json)
        assert im.format == "PNG" and im.size == (28, 28) and im.mode == "L"
        assert d.revised_prompt == "sneaker"
    # a class named inside a sentence, the diffusion model's guidance/steps, and data: URLs
    r = client.images.generate(model="tiny-diffusion", prompt="an ankle-boot please", n=1,
                               extra_body={"steps": 2, "guidance": 2.0, "seed": 1})
    assert r.data[0].revised_prompt == "ankle-boot" and r.data[0].url.startswith("data:image/png;base64,")
    assert _png(r.data[0].url.split(",", 1)[1]).size == (28, 28)
    with pytest.raises(openai.BadRequestError, match="names no class"):
        client.images.generate(model="tiny-vae", prompt="a spaceship")
    with pytest.raises(openai.BadRequestError, match="text-generation"):
        client.images.generate(model="tiny-gpt", prompt="sneaker")
    with pytest.raises(openai.BadRequestError, match="size"):
        client.images.generate(model="tiny-vae", prompt="bag", size="1024x1024")


def test_same_seed_same_images(client):
    a = client.images.generate(model="tiny-vae", prompt="bag", n=2, response_format="b64_json", extra_body={"seed": 4})
    b = client.images.generate(model="tiny-vae", prompt="bag", n=2, response_format="b64_json", extra_body={"seed": 4})
    assert [d.b64_json for d in a.data] == [d.b64_json for d in b.data]


def test_classifications(server, runs, data_root):
    # text: the same answer as the recipe's own classify()
    texts = ["a moving, beautifully acted film", "dull and far too long"]
    r = httpx.post(server.url + "/v1/classifications", json={"model": "tiny-sentiment", "input": texts, "top": 2})
    assert r.status_code == 200, r.text
    m = server.models["tiny-sentiment"]
    want = m.recipe.classify(m.model, m.cfg, texts, top=2)
    got = r.json()["data"]
    assert [d["label"] for d in got] == [w["label"] for w in want]
    assert all(abs(sum(t["score"] for t in d["top"]) - 1) < 1e-5 for d in got)  # 2 classes: all the mass
    # images: a real digits image sent as a base64 PNG, and as a data: URL
    from genforge.recipes.image_classify import _splits

    split, _ = _splits(server.models["tiny-digits"].cfg)
    x = split["test"][0][:3]
    pngs = []
    for img in x:
        buf = io.BytesIO()
        Image.fromarray(img[0].numpy()).save(buf, format="PNG")
        pngs.append(base64.b64encode(buf.getvalue()).decode())
    pngs[1] = "data:image/png;base64," + pngs[1]
    r = httpx.post(server.url + "/v1/classifications", json={"model": "tiny-digits", "input": pngs})
    assert r.status_code == 200, r.text
    md = server.models["tiny-digits"]
    with torch.no_grad():
        from genforge.recipes.image_classify import _normalize

        want = md.model(_normalize(x, md.cfg)).argmax(-1)
    assert [d["label"] for d in r.json()["data"]] == [md.cfg.classes[i] for i in want]
    bad = httpx.post(server.url + "/v1/classifications", json={"model": "tiny-digits", "input": "not base64!"})
    assert bad.status_code == 400 and "base64" in bad.json()["error"]["message"]
    junk = httpx.post(server.url + "/v1/classifications",
                      json={"model": "tiny-digits", "input": base64.b64encode(b"plain text").decode()})
    assert junk.status_code == 400 and "not a readable image" in junk.json()["error"]["message"]


# ---------------------------------------------------------------------------------------
# errors


def test_typed_errors(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="missing", prompt="x")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-gpt", prompt="x", temperature=3.5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny-gpt", prompt="x" * 65)
    assert e.value.code == "context_length_exceeded" and "64 tokens" in e.value.message
    with pytest.raises(openai.BadRequestError, match="never saw"):
        client.chat.completions.create(model="tiny-gpt", messages=[{"role": "user", "content": "\u263a"}])
    with pytest.raises(openai.BadRequestError, match="unknown parameter"):
        client.completions.create(model="tiny-gpt", prompt="x", extra_body={"temprature": 1})
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny-gpt", prompt="x", max_tokens=10 ** 6)
    with pytest.raises(openai.BadRequestError, match="classification"):
        client.completions.create(model="tiny-sentiment", prompt="x")
    with pytest.raises(openai.BadRequestError, match="presence"):
        client.completions.create(model="tiny-gpt", prompt="x", presence_penalty=1.0)


def test_raw_http_errors(server):
    url = server.url
    r = httpx.post(url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url + "/v1/completions", json=["a", "list"])
    assert r.status_code == 400
    big = {"model": "tiny-gpt", "prompt": "x" * (Limits().max_body_bytes + 10)}
    r = httpx.post(url + "/v1/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.delete(url + "/v1/models")
    assert r.status_code == 405 and "error" in r.json()


def test_api_key(runs):
    with LiveServer([runs["tiny-gpt"]], api_key="s3cret") as s:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
        r = httpx.get(s.url + "/v1/models")
        assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
        ok = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in ok.models.list().data] == ["tiny-gpt"]
        # the playground and health check stay open; the page asks for the key itself
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.get(s.url + "/").status_code == 200


# ---------------------------------------------------------------------------------------
# concurrency, the queue limit, disconnects


def test_queue_full_is_429(runs):
    with LiveServer([runs["tiny-gpt"]], Limits(workers=1, max_pending=2, max_tokens=100000)) as s:
        c = openai.OpenAI(base_url=s.url + "/v1", api_key="x", max_retries=0)
        streams = [c.completions.create(model="tiny-gpt", prompt="A", max_tokens=100000, stream=True)
                   for _ in range(2)]
        for st in streams:  # both admitted and producing
            next(iter(st))
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model="tiny-gpt", prompt="A", max_tokens=5)
        assert e.value.code == "queue_full"
        for st in streams:
            st.close()
        assert s.wait_idle()["pending"] == 0
        assert c.completions.create(model="tiny-gpt", prompt="A", max_tokens=5).usage.completion_tokens == 5


def test_disconnect_stops_generation(runs):
    with LiveServer([runs["tiny-gpt"]], Limits(workers=1, max_tokens=1_000_000)) as s:
        with httpx.stream("POST", s.url + "/v1/completions",
                          json={"model": "tiny-gpt", "prompt": "A", "max_tokens": 1_000_000, "stream": True}) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(x.startswith("data: ") for x in got)
        # the client is gone: the job is dropped at its next turn, long before 1M tokens
        stats = s.wait_idle(timeout=10)
        assert stats["pending"] == 0 and stats["cancelled"] == 1


def test_concurrent_streams_all_progress(runs):
    """With one worker, 6 long streams still advance together (round robin): every stream
    sees its first text before any stream finishes."""
    with LiveServer([runs["tiny-gpt"]], Limits(workers=1, max_tokens=4000)) as s:
        first, done, errors = {}, {}, []

        def run(i):
            try:
                body = {"model": "tiny-gpt", "prompt": "A", "max_tokens": 600, "stream": True, "seed": i}
                with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=60) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                            first.setdefault(i, time.perf_counter())
                done[i] = time.perf_counter()
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and len(done) == 6
        assert max(first.values()) < min(done.values())


def test_health_and_offline_playground(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and "tiny-gpt" in h["models"] and h["workers"]["workers"] == 2
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    # nothing fetched from elsewhere: no external scripts, styles, fonts or images
    import re

    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html
