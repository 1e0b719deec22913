"""audio-classify and audio-generate end to end on real FSDD slices: train a little, then
`genforge predict`, `genforge explain` and `genforge generate` as a user runs them, and the
one clear message for each kind of bad input. The CLI runs in-process (typer's CliRunner,
with genforge.cli.main's handling of user errors); one tiny run of each recipe per module."""
import io
import os
import subprocess
import sys
import wave
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from genforge.cli import _user_errors, app
from genforge.config import make_config
from genforge.recipes import get_recipe
from genforge.train.trainer import fit

FSDD = Path(os.environ.get("GENFORGE_DATA", "")) / "fsdd" / "recordings"
pytestmark = pytest.mark.skipif(not FSDD.is_dir(), reason="GENFORGE_DATA with fsdd/ is needed")

CLASSIFY = {"model": "cnn", "data": "fsdd", "max_steps": 40, "batch_size": 32, "eval_batches": 2,
            "eval_every": 40, "model.channels": (8, 16), "model.dense": 16, "plots": False}
GENERATE = {"model": "vae", "data": "fsdd", "max_steps": 5, "batch_size": 16, "train_limit": 128,
            "eval_batches": 1, "eval_every": 5, "n_mels": 16, "gl_iters": 4, "model.arch": "conv",
            "model.conv_channels": 4, "model.hidden": 16, "model.latent": 4, "plots": False}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("audio_runs")
    for name, rname, ov in (("clf", "audio-classify", CLASSIFY), ("gen", "audio-generate", GENERATE)):
        fit(rname, make_config(get_recipe(rname), ov), root / name, log=lambda s: None)
    return root


def genforge(*args, ok=True):
    """`genforge ARGS` in this process: stdout, stderr and the exit status as the command line
    gives them (a user error is genforge.cli.main's one line `error: ...` and status 2; any
    other exception is a traceback, so it fails the test)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    stderr, code = res.stderr, res.exit_code
    if isinstance(res.exception, _user_errors()):
        stderr, code = stderr + f"error: {res.exception}\n", 2
    elif res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    p = SimpleNamespace(stdout=res.stdout, stderr=stderr, returncode=code)
    assert (p.returncode == 0) == ok, p.stdout + p.stderr
    return p


def genforge_subprocess(*args, ok=True):
    """The real console entry point in a child process (for the one test that checks it)."""
    p = subprocess.run([sys.executable, "-m", "genforge", *map(str, args)], capture_output=True,
                       text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (p.returncode == 0) == ok, p.stdout + p.stderr
    return p


def test_predict_wav_files(runs):
    p = genforge("predict", runs / "clf", FSDD / "7_theo_0.wav", FSDD / "2_george_1.wav", "--json")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 2
    import json

    for ln in lines:
        r = json.loads(ln)
        assert r["label"] in get_recipe("audio-generate").Config().classes or r["label"].isalpha()
        assert 0 < r["probability"] <= 1 and len(r["top"]) == 3


def test_explain_draws_saliency_over_the_spectrogram(runs, tmp_path):
    out = tmp_path / "sal.png"
    p = genforge("explain", runs / "clf", FSDD / "7_theo_0.wav", "--method", "saliency", "--out", out)
    assert out.is_file() and out.stat().st_size > 5000
    assert f"wrote {out}" in p.stdout


def test_ten_minute_clip_is_cropped_and_said(runs, tmp_path):
    p = tmp_path / "long.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.zeros(600 * 8000, "<i2").tobytes())
    r = genforge("predict", runs / "clf", p)
    assert "long.wav is 600.0 s long; only its first 1 s were classified" in r.stderr


@pytest.mark.parametrize("content,message", [
    (b"GIF89a not a sound", "neither a WAV nor a FLAC"),
    (b"", "neither a WAV nor a FLAC"),
])
def test_bad_files_get_one_clear_line(runs, tmp_path, content, message):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    r = genforge("predict", runs / "clf", p, ok=False)
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_bad_file_through_the_real_command_line(runs, tmp_path):
    """The same one line from `python -m genforge` itself (a child process: ~10 s of imports)."""
    p = tmp_path / "bad.wav"
    p.write_bytes(b"GIF89a not a sound")
    r = genforge_subprocess("predict", runs / "clf", p, ok=False)
    assert "neither a WAV nor a FLAC" in r.stderr and "Traceback" not in r.stderr


def test_folder_of_audio(runs, tmp_path):
    d = tmp_path / "clips"
    d.mkdir()
    for name in ("1_nicolas_0.wav", "5_yweweler_2.wav"):
        (d / name).write_bytes((FSDD / name).read_bytes())
    (d / "readme.txt").write_text("not a clip")
    p = genforge("predict", runs / "clf", d)
    assert p.stdout.count(".wav\t") == 2


def test_generate_writes_the_clips_as_wav(runs, tmp_path):
    out = tmp_path / "seven.wav"
    p = genforge("generate", runs / "gen", "--label", "seven", "--n", "2", "--out", out)
    assert "wrote 2" in p.stdout
    cfg = get_recipe("audio-generate")
    for f in (out, tmp_path / "seven_0.wav", tmp_path / "seven_1.wav"):
        with wave.open(str(f)) as w:
            assert w.getframerate() == 8000 and w.getnchannels() == 1 and w.getnframes() > 1000
    r = genforge("generate", runs / "gen", "--label", "eleven", "--out", tmp_path / "x.wav", ok=False)
    assert "eleven" in r.stderr and "seven" in r.stderr
    r = genforge("generate", runs / "gen", "--label", "7", "--out", tmp_path / "x.png", ok=False)
    assert "ending in .wav" in r.stderr


def test_labels_by_name_and_numeral(runs):
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(runs / "gen")
    assert recipe.parse_label(cfg, "Seven") == recipe.parse_label(cfg, "7") == 7
    waves = recipe.sample(model, cfg, n=3, label="two", seed=1)
    assert waves.shape == (3, recipe.clip_length(cfg)) and waves.abs().max() <= 1
