"""The CLI end to end, as a user runs it: train a few steps, eval, predict, runs, errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from genforge.data.idx import read_idx
from genforge.train.checkpoint import read_metrics


def gf(*args, cwd, check=True):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, "-m", "genforge", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"genforge {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_train_eval_predict_runs(tmp_path, data_root):
    tiny = ["--set", "max_steps=6", "--set", "train_limit=300", "--set", "eval_every=3",
            "--set", "model.channels=4,8", "--set", "model.dense=8", "--set", "batch_size=32"]
    p = gf("train", "quickstart", *tiny, "--out", "runs/q", cwd=tmp_path)
    assert "model.channels=4,8" in p.stdout  # resolved config is printed
    run = tmp_path / "runs" / "q"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["recipe"] == "image-classify" and cfg["classes"][7] == "sneaker"
    assert (run / "plots" / "curves.png").is_file()

    p = gf("eval", "runs/q", "--split", "test", cwd=tmp_path)
    assert "accuracy=" in p.stdout and "confusion matrix" in p.stdout
    ev = json.loads((run / "eval.json").read_text())["test"]
    assert 0.0 <= ev["accuracy"] <= 1.0 and len(ev["confusion_matrix"]) == 10
    assert (run / "plots" / "confusion_test.png").is_file()

    imgs = read_idx(data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")[:2].numpy()
    _png(tmp_path / "a.png", imgs[0])
    _png(tmp_path / "b.png", np.stack([imgs[1]] * 3, -1))  # RGB input is converted to grey
    p = gf("predict", "runs/q", "a.png", "b.png", cwd=tmp_path)
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("a.png\t")
    assert float(lines[0].split("\t")[2]) > 0

    p = gf("runs", "runs", cwd=tmp_path)
    assert "q" in p.stdout and "val_accuracy" in p.stdout


def test_resume_extends_a_run(tmp_path):
    gf("train", "mlp-digits", "--set", "max_steps=4", "--set", "eval_every=2", "--out", "r", cwd=tmp_path)
    p = gf("train", "--resume", "r", "--set", "max_steps=6", cwd=tmp_path)
    assert "resumed r at step 4/6" in p.stdout
    steps = [r["step"] for r in read_metrics(tmp_path / "r")]
    assert max(steps) == 6


def test_train_on_own_image_folder(tmp_path, data_root):
    imgs = read_idx(data_root / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")[:60].numpy()
    labels = read_idx(data_root / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")[:60].numpy()
    for i, (im, lab) in enumerate(zip(imgs, labels)):
        d = tmp_path / "mine" / f"class{lab}"
        d.mkdir(parents=True, exist_ok=True)
        _png(d / f"{i}.png", im)
    gf("train", "image-classify", "--set", "data=mine", "--set", "model=mlp", "--set", "max_steps=3",
       "--set", "batch_size=8", "--out", "r", cwd=tmp_path)
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["classes"][0].startswith("class") and cfg["height"] == 28


@pytest.mark.parametrize("args,message", [
    (["train", "mlp-digits", "--set", "bogus=1"], "unknown config key 'bogus'"),
    (["train", "no-such-recipe"], "unknown recipe or preset"),
    (["train", "image-classify", "--set", "data=nowhere/"], "neither a named image dataset"),
    (["eval", "not-a-run"], "not a genforge run"),
    (["list", "no-such-recipe"], "unknown recipe or preset 'no-such-recipe'"),
    (["train", "no-such-recipe", "--help"], "unknown recipe or preset 'no-such-recipe'"),
])
def test_clear_errors(tmp_path, args, message):
    p = gf(*args, cwd=tmp_path, check=False)
    assert p.returncode == 2
    assert message in p.stderr and "Traceback" not in p.stderr


def test_help_everywhere(tmp_path):
    for cmd in ([], ["train"], ["eval"], ["predict"], ["generate"], ["runs"], ["list"]):
        p = gf(*cmd, "--help", cwd=tmp_path)
        assert "Usage" in p.stdout


def test_recipe_help_lists_every_key_with_its_comment(tmp_path):
    p = gf("train", "image-classify", "--help", cwd=tmp_path)
    assert "Usage" in p.stdout and "--set KEY=VALUE" in p.stdout
    lines = p.stdout.splitlines()
    lr = lines.index("  lr = 0.001  (float, >= 0)")
    assert "learning rate" in lines[lr + 1]
    drop = lines.index("  model.dropout = 0.0  (float, in [0, 1))")  # the first family's (mlp)
    assert "dropout probability" in lines[drop + 1]
    assert "model.<key> of family resnet (--set model=resnet):" in lines
    # `genforge list RECIPE` prints the same listing; a preset shows its own values
    assert gf("list", "image-classify", cwd=tmp_path).stdout.strip() in p.stdout
    p = gf("list", "cnn-fashion", cwd=tmp_path)
    assert " *model.channels = 32,64,128  (int,..., >= 1)" in p.stdout.splitlines()


# ---------------------------------------------------------------------------------------
# issue 17: validated settings, recoverable runs, conventions


@pytest.mark.parametrize("setting,message", [
    ("batch_size=0", "batch_size=0 is out of range: batch_size must be >= 1"),
    ("epochs=-1", "epochs must be > 0"),
    ("max_steps=-5", "max_steps must be >= 0"),
    ("lr=-1", "lr must be >= 0"),
    ("model.dropout=1.5", "model.dropout must be in [0, 1)"),
])
def test_out_of_range_setting_is_one_error_line_and_writes_nothing(tmp_path, setting, message):
    p = gf("train", "mlp-digits", "--set", setting, "--out", "r", cwd=tmp_path, check=False)
    assert p.returncode == 2 and message in p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()


def test_failed_run_does_not_block_its_out_and_overwrite_restarts(tmp_path):
    bad = gf("train", "mlp-digits", "--set", "max_steps=2", "--set", "metric=val_nope", "--out", "r",
             cwd=tmp_path, check=False)
    assert bad.returncode == 2 and not (tmp_path / "r").exists()
    gf("train", "mlp-digits", "--set", "max_steps=2", "--out", "r", cwd=tmp_path)
    p = gf("train", "mlp-digits", "--set", "max_steps=2", "--out", "r", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "--overwrite" in p.stderr
    p = gf("train", "mlp-digits", "--set", "max_steps=3", "--out", "r", "--overwrite", cwd=tmp_path)
    assert max(r["step"] for r in read_metrics(tmp_path / "r")) == 3
    assert "--overwrite" in gf("train", "--help", cwd=tmp_path).stdout


def test_resume_of_a_run_without_checkpoint_says_to_run_without_resume(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    cfg = {"recipe": "image-classify", "model": "mlp", "data": "digits"}
    (run / "config.json").write_text(json.dumps(cfg))  # what a run killed before its first save left
    p = gf("train", "--resume", "r", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "holds no checkpoint" in p.stderr and "without --resume" in p.stderr


def test_version_and_did_you_mean(tmp_path):
    from genforge import __version__

    assert gf("--version", cwd=tmp_path).stdout.strip() == f"genforge {__version__}"
    p = gf("train", "mlp-digits", "--set", "data=digts", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "did you mean 'digits'?" in p.stderr
    p = gf("train", "mlp-digit", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "did you mean 'mlp-digits'?" in p.stderr


def test_training_summary_and_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = gf("train", "mlp-digits", "--set", "max_steps=2", "--out", "r", cwd=tmp_path)
    finally:
        os.umask(old)
    out = p.stdout
    assert "data: digits:" in out and "parameters, on cpu" in out and "training: 2 steps" in out
    config_block = out.split("config (")[1].split("training:")[0]
    assert len(config_block.strip().splitlines()) <= 8 and "model.n_classes=10" in config_block
    for name in ("config.json", "metrics.jsonl"):
        assert (tmp_path / "r" / name).stat().st_mode & 0o777 == 0o644, name
