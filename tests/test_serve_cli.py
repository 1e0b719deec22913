"""`genforge serve` as users start it (a subprocess), and what it refuses to serve."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from genforge.config import make_config
from genforge.recipes import get_recipe
from genforge.serve.chat import ChatTemplate, load_chat_template
from genforge.serve.engine import load_models
from genforge.train.checkpoint import RunError
from genforge.train.trainer import fit
from serving import LiveServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpt_run(serve_runs) -> Path:
    return serve_runs["tiny-gpt"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command(gpt_run):
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GENFORGE_API_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "genforge", "serve", str(gpt_run), "--port", str(port),
                             "--workers", "1", "--max-tokens", "50", "--max-prompt-tokens", "20"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.time() > deadline:
                    proc.kill()
                    pytest.fail("the server did not start:\n" + proc.communicate()[0])
                time.sleep(0.2)
        c = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        r = c.completions.create(model=gpt_run.name, prompt="KING:", max_tokens=20, seed=0)
        assert r.usage.completion_tokens == 20
        with pytest.raises(openai.BadRequestError, match="at most 50"):  # --max-tokens applied
            c.completions.create(model=gpt_run.name, prompt="KING:", max_tokens=51)
        # --max-prompt-tokens applied, and reported in the model list
        assert c.models.retrieve(gpt_run.name).model_extra["genforge"]["max_prompt_tokens"] == 20
        c.completions.create(model=gpt_run.name, prompt="x" * 20, max_tokens=1)
        with pytest.raises(openai.BadRequestError, match="20 tokens"):
            c.completions.create(model=gpt_run.name, prompt="x" * 21, max_tokens=1)
        with pytest.raises(openai.AuthenticationError):  # key from GENFORGE_API_KEY
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"serving {gpt_run.name}: text-generation" in out


def test_serve_refuses_what_it_cannot_serve(tmp_path, gpt_run):
    r = subprocess.run([sys.executable, "-m", "genforge", "serve", str(tmp_path / "nope")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 2 and "is not a genforge run" in r.stderr
    # a port already in use: one clear error, before anything is announced
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        r = subprocess.run([sys.executable, "-m", "genforge", "serve", str(gpt_run), "--port",
                            str(taken.getsockname()[1])], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and "serving" not in r.stdout
    # a reinforcement-learning run has no HTTP task
    rl = get_recipe("reinforce")
    fit("reinforce", make_config(rl, {**rl.TEST_CONFIG, "plots": False}), tmp_path / "rl", log=lambda s: None)
    with pytest.raises(RunError, match="cannot serve"):
        load_models([tmp_path / "rl"])
    # two runs with one name would share a model id
    import shutil

    twin = tmp_path / "other" / gpt_run.name
    shutil.copytree(gpt_run, twin)
    with pytest.raises(RunError, match="rename"):
        load_models([gpt_run, twin])


def test_chat_template_file(tmp_path, gpt_run):
    assert load_chat_template(tmp_path) == ChatTemplate()
    (tmp_path / "chat_template.json").write_text(json.dumps({"user": "Q: {content}\n", "generation": "A:",
                                                              "stop": ["\nQ:"]}))
    t = load_chat_template(tmp_path)
    assert t.render([("user", "hi")]) == "Q: hi\nA:" and t.stop == ("\nQ:",)
    (tmp_path / "chat_template.json").write_text(json.dumps({"usr": "x"}))
    with pytest.raises(RunError, match="keys among"):
        load_chat_template(tmp_path)
    (tmp_path / "chat_template.json").write_text("{broken")
    with pytest.raises(RunError, match="not valid JSON"):
        load_chat_template(tmp_path)
    # a run with a template answers chat with it
    import shutil

    run = tmp_path / "templated"
    shutil.copytree(gpt_run, run)
    (run / "chat_template.json").write_text(json.dumps({"user": "Q: {content}\n", "generation": "A:"}))
    with LiveServer([run]) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json={
            "model": "templated", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len("Q: hi\nA:")


def test_serve_quantized_language_model(gpt_run):
    """`serve --quantize int8`: the language model's Linear layers are int8 (the fast kernel,
    calibrated, where fbgemm exists); single and concurrent (batched) streams answer; a bad
    --quantize is one error before anything loads."""
    from genforge.pretrained.quantize import Int8Linear, fbgemm_available

    with LiveServer([gpt_run], quantize="int8") as srv:
        model = srv.models[gpt_run.name].model
        layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
        assert layers and not any(type(m) is __import__("torch").nn.Linear for m in model.modules())
        assert {m.kernel for m in layers} == {"fbgemm" if fbgemm_available() else "dequant"}
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        alone = c.completions.create(model=gpt_run.name, prompt="KING:", max_tokens=12, temperature=0)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda p: c.completions.create(model=gpt_run.name, prompt=p, max_tokens=12,
                                                              temperature=0),
                               ["KING:", "QUEEN:", "KING:", "ROMEO:"]))
        assert alone.usage.completion_tokens == 12 and alone.choices[0].text
        assert all(o.usage.completion_tokens == 12 and o.choices[0].text for o in outs)
    r = subprocess.run([sys.executable, "-m", "genforge", "serve", str(gpt_run), "--quantize", "int4"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 2 and "unknown quantization 'int4'; supported: int8" in r.stderr
    assert "serving" not in r.stdout
