"""image-generate recipe: the GAN's two-optimiser update, data fallbacks, quality metrics
through a real classifier run, and `genforge generate` writing a PNG of the asked shape."""
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from genforge.config import ConfigError, make_config
from genforge.recipes import get_recipe
from genforge.train.checkpoint import load_run
from genforge.train.trainer import fit

R = get_recipe("image-generate")


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _changed(before, module):
    return {k for k, v in module.named_parameters() if not torch.equal(before[k], v)}


def _gan():
    cfg = make_config(R, R.TEST_CONFIGS["gan"])
    torch.manual_seed(0)
    model = R.build(cfg)
    batch = next(iter(R.batches(cfg, "train")))
    return cfg, model, batch


def test_gan_update_changes_both_networks_weights_and_nothing_else():
    cfg, model, batch = _gan()
    opts = R.optimizers(model, cfg)
    # each optimiser owns exactly one network, with DCGAN's beta1
    assert {id(p) for g in opts["g"].param_groups for p in g["params"]} == {id(p) for p in model.generator.parameters()}
    assert {id(p) for g in opts["d"].param_groups for p in g["params"]} == {id(p) for p in model.discriminator.parameters()}
    assert all(g["betas"][0] == 0.5 for o in opts.values() for g in o.param_groups)
    g0, d0 = _snapshot(model.generator), _snapshot(model.discriminator)
    x0 = batch[0].clone()
    logs = R.update(model, batch, opts, 0, cfg)
    assert _changed(g0, model.generator) == set(g0)  # every generator weight moved
    assert _changed(d0, model.discriminator) == set(d0)  # every discriminator weight moved
    assert torch.equal(batch[0], x0)  # the data batch is untouched
    assert all(p.requires_grad for p in model.parameters())  # D is unfrozen again
    assert set(logs) == {"d_loss", "g_loss", "d_real", "d_fake"}
    assert 0 < logs["d_real"] < 1 and 0 < logs["d_fake"] < 1


@pytest.mark.parametrize("frozen", ["g", "d"])
def test_gan_each_optimizer_only_moves_its_own_network(frozen):
    cfg, model, batch = _gan()
    opts = R.optimizers(model, cfg)
    for g in opts[frozen].param_groups:
        g["lr"] = 0.0  # Adam with lr 0 leaves its parameters exactly in place
    net = model.generator if frozen == "g" else model.discriminator
    other = model.discriminator if frozen == "g" else model.generator
    n0, o0 = _snapshot(net), _snapshot(other)
    R.update(model, batch, opts, 0, cfg)
    assert _changed(n0, net) == set()
    assert _changed(o0, other) == set(o0)


def test_one_loss_families_use_one_optimizer_and_step():
    cfg = make_config(R, R.TEST_CONFIGS["vae-mlp"])
    torch.manual_seed(0)
    model = R.build(cfg)
    opts = R.optimizers(model, cfg)
    assert list(opts) == ["main"]
    before = _snapshot(model)
    logs = R.update(model, next(iter(R.batches(cfg, "train"))), opts, 0, cfg)
    assert {"loss", "recon", "kl"} <= set(logs)
    assert _changed(before, model) == set(before)
    with pytest.raises(TypeError, match="update"):
        R.loss(_gan()[1], _gan()[2])


def test_mnist_trains_from_its_test_split_when_the_train_split_is_missing(data_root):
    if (data_root / "mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("this data folder has the MNIST training split")
    cfg = make_config(R, {**R.TEST_CONFIGS["vae-mlp"], "data": "mnist", "train_limit": 0})
    sp, classes = R.splits(cfg)
    assert classes == [str(i) for i in range(10)]
    n = {k: len(v[0]) for k, v in sp.items()}
    assert n == {"train": 7200, "val": 800, "test": 2000}  # 80/20 of 10k, then 10% val
    # the held-out test images are disjoint from the training images
    train = {bytes(x.numpy()) for x in sp["train"][0][:2000]}
    assert not any(bytes(x.numpy()) in train for x in sp["test"][0])
    cfg.test_fraction = 0.3  # the carve follows test_fraction
    assert {k: len(v[0]) for k, v in R.splits(cfg)[0].items()} == {"train": 6300, "val": 700, "test": 3000}


def test_quality_metrics_with_a_real_classifier_run(tmp_path):
    clf_recipe = get_recipe("image-classify")
    ccfg = make_config(clf_recipe, {**clf_recipe.TEST_CONFIGS["cnn-fashion"], "plots": False})
    clf_run = fit("image-classify", ccfg, tmp_path / "clf", log=lambda s: None)
    cfg = make_config(R, {**R.TEST_CONFIGS["gan"], "classifier": str(clf_run), "eval_samples": 40})
    torch.manual_seed(0)
    model = R.build(cfg)
    res = R.evaluate(model.eval(), cfg, "val")
    assert {"loss", "fid", "is", "class_consistency"} <= set(res)
    assert res["fid"] > 0 and 1 <= res["is"] <= 10 and 0 <= res["class_consistency"] <= 1
    # the feature space is the classifier's: real images score far better than untrained samples
    from genforge.evaluate.fid import FeatureClassifier, real_reference

    sp, _ = R.splits(cfg)
    ref = real_reference(FeatureClassifier.from_run(clf_run), sp["train"][0].float() / 255,
                         sp["test"][0].float() / 255, n=40)
    assert ref["fid"] < res["fid"]


@pytest.fixture(scope="module")
def runs(imagegen_runs):
    return imagegen_runs  # conftest.py: one-step gan, diffusion and vae-mlp runs


def _cli(*args):
    from genforge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_generate_cli_writes_png_of_the_asked_shape(runs, tmp_path):
    out = tmp_path / "grid.png"
    res = _cli("generate", runs["gan"], "--n", 12, "--label", "sneaker", "--out", out)
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        im.verify()  # checksums and structure
    with Image.open(out) as im:
        # 12 images of 28x28 in a 4x3 grid with 2-pixel borders
        assert im.format == "PNG" and im.mode == "L" and im.size == (4 * 30 + 2, 3 * 30 + 2)
    # no label on a conditional model: one class per column, 10 columns
    res = _cli("generate", runs["diffusion"], "--n", 20, "--guidance", 2, "--steps", 2, "--out", out)
    assert res.exit_code == 0, res.output
    with Image.open(out) as im:
        assert im.size == (10 * 30 + 2, 2 * 30 + 2)


def test_generate_rejects_bad_options(runs, tmp_path):
    _, cfg, model = load_run(runs["gan"])
    with pytest.raises(ConfigError, match="unknown label 'spaceship'"):
        R.cli_generate(model, cfg, runs["gan"], n=4, label="spaceship", out=tmp_path / "x.png")
    with pytest.raises(ConfigError, match="diffusion models only"):
        R.cli_generate(model, cfg, runs["gan"], n=4, guidance=3.0, out=tmp_path / "x.png")
    with pytest.raises(ConfigError, match="--prompt"):
        R.cli_generate(model, cfg, runs["gan"], n=4, prompt="hi", out=tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    assert (runs["gan"] / "samples" / "step000001.png").is_file()  # written during training
