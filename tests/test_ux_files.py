"""Own files as a new user brings them (issue 17): `genforge predict` takes a folder, `-`
(standard input) and `--json` (item 8), and a folder with an unreadable image fails with the
right advice or, with skip_bad_files, is read without it (item 9)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from genforge.cli import app
from genforge.config import make_config
from genforge.data.images import load_image, load_image_splits
from genforge.data.registry import DataError
from genforge.recipes import get_recipe
from genforge.train.trainer import fit


def _cli(*args, input=None):
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def _folder(root: Path, per_class: int = 6) -> Path:
    for ci, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            Image.new("L", (8, 8), color=40 * ci + 5 * k).save(root / name / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ux_files")
    out = {}
    tc = get_recipe("text-classify")
    cfg = make_config(tc, {**tc.TEST_CONFIGS["bag"], "plots": False})
    fit("text-classify", cfg, root / "text", log=lambda s: None)
    out["text"] = root / "text"
    ic = get_recipe("image-classify")
    cfg = make_config(ic, {"model": "mlp", "data": str(_folder(root / "imgs")), "max_steps": 2,
                           "batch_size": 4, "eval_batches": 1, "model.hidden": (8,), "plots": False})
    fit("image-classify", cfg, root / "image", log=lambda s: None)
    out["image"], out["imgs"] = root / "image", root / "imgs"
    return out


def test_predict_reads_stdin_one_text_per_line_as_json(runs):
    res = _cli("predict", runs["text"], "-", "--json", "--top", 2,
               input="a gripping , moving film\n\nthe worst movie of the year\n")
    assert res.exit_code == 0, res.output
    rows = [json.loads(ln) for ln in res.output.splitlines()]
    assert [r["input"] for r in rows] == ["a gripping , moving film", "the worst movie of the year"]
    for r in rows:
        assert r["label"] in ("negative", "positive") and 0 <= r["probability"] <= 1
        assert [t["label"] for t in r["top"]][0] == r["label"] and len(r["top"]) == 2


def test_predict_folder_of_texts_and_of_images(runs, tmp_path):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("a fine film")
    (tmp_path / "texts" / "b.txt").write_text("dull")
    (tmp_path / "texts" / "notes.md").write_text("not an input")
    res = _cli("predict", runs["text"], tmp_path / "texts")
    assert res.exit_code == 0, res.output
    assert [ln.split("\t")[0] for ln in res.output.splitlines()] == [
        str(tmp_path / "texts" / "a.txt"), str(tmp_path / "texts" / "b.txt")]
    res = _cli("predict", runs["image"], runs["imgs"] / "dog", "--json")
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) == 6
    res = _cli("predict", runs["image"], tmp_path / "texts")
    assert res.exit_code != 0 and "holds no image files" in " ".join(res.output.replace("│", " ").split())


def test_predict_help_names_the_inputs_per_run_kind():
    res = _cli("predict", "--help")
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "text runs: the texts themselves" in text and "image runs: image files" in text
    assert "--json" in text


def test_corrupt_png_advice_and_skip_bad_files(tmp_path, capsys):
    root = _folder(tmp_path / "imgs", per_class=5)
    good = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    (root / "dog" / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        load_image_splits(str(root), test_fraction=0.2)
    msg = str(err.value)
    assert "broken.png is not a readable image" in msg and "damaged or truncated" in msg
    assert "skip_bad_files=true" in msg and "use PNG or JPEG" not in msg
    d = load_image_splits(str(root), test_fraction=0.2, skip_bad_files=True)
    assert sum(len(y) for _, y in d.splits.values()) == 10
    note = capsys.readouterr().err
    assert "skipped 2 unreadable image(s)" in note
    assert "cat/broken.png" in note and "dog/empty.png" in note
    # a single file given by the user (predict, the server) gets the advice without the key
    with pytest.raises(DataError, match="damaged or truncated; replace it or remove it$"):
        load_image(root / "cat" / "broken.png")
