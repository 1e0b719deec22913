"""Through the real command line: train a tiny language model, then `generate --stream`."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def genforge(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "genforge", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lm") / "run"
    r = genforge("train", "language-model", "--out", str(out),
                 "--set", "max_steps=30", "--set", "eval_every=30", "--set", "eval_batches=4",
                 "--set", "batch_size=8", "--set", "model.block_size=32",
                 "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=32",
                 "--set", "sample_prompt=ROMEO:", "--set", "sample_tokens=30", "--set", "plots=false")
    assert r.returncode == 0, r.stderr
    # the sample printed at the evaluation, and saved with the run
    assert "sample at step 30:\nROMEO:" in r.stdout
    assert (out / "samples" / "step_0000030.txt").read_text().startswith("ROMEO:")
    assert (out / "tokenizer.json").is_file()
    return out


def test_generate_stream(run):
    r = genforge("generate", str(run), "--prompt", "ROMEO:", "--stream", "--max-tokens", "40",
                 "--temperature", "0.8", "--top-k", "20", "--top-p", "0.95", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:")
    assert len(r.stdout.rstrip("\n")) == len("ROMEO:") + 40  # char-level: one char per token
    # the same seed without streaming gives the same text
    r2 = genforge("generate", str(run), "--prompt", "ROMEO:", "--max-tokens", "40",
                  "--temperature", "0.8", "--top-k", "20", "--top-p", "0.95", "--seed", "1")
    assert r2.stdout == r.stdout


def test_generate_bad_option_is_a_clear_error(run):
    r = genforge("generate", str(run), "--prompt", "ROMEO:", "--top-p", "1.5")
    assert r.returncode == 2
    assert "top_p must be in (0, 1]" in r.stderr and "Traceback" not in r.stderr
    r = genforge("generate", str(run), "--prompt", "ROMEO:", "--guidance", "2")
    assert r.returncode == 2 and "unknown generation option 'guidance'" in r.stderr


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_generate_compiled_decode_gives_the_same_text(run):
    args = ["generate", str(run), "--prompt", "ROMEO:", "--max-tokens", "30", "--temperature",
            "0.8", "--seed", "3"]
    eager, compiled = genforge(*args), genforge(*args, "--compile")
    assert compiled.returncode == 0, compiled.stderr
    assert compiled.stdout == eager.stdout
    assert len(compiled.stdout) >= len("ROMEO:") + 30 and len(set(compiled.stdout[6:])) > 3
