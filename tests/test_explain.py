"""Explainability: oracle tests for saliency and integrated gradients, and `genforge explain`
end to end on tiny real runs (text and image)."""
import pytest
import torch
import torch.nn as nn

from genforge.evaluate.explain import integrated_gradients, saliency, token_attributions
from genforge.models.text_encoders import ENCODERS

# IG completeness tolerance: |sum(attr) - (f(x) - f(x'))| <= 1e-3 * max(1, |f(x) - f(x')|),
# checked against our own forward passes (not Captum's reported delta). Captum's default
# Gauss-Legendre rule with 64 steps is far inside this on smooth nets.
TOL = 1e-3


def _check_completeness(attr_sum, fx, fb):
    gap = abs(attr_sum - (fx - fb))
    assert gap <= TOL * max(1.0, abs(fx - fb)), (attr_sum, fx - fb)


def test_saliency_of_linear_model_is_its_weights():
    torch.manual_seed(0)
    lin = nn.Linear(7, 3)
    x = torch.randn(4, 7)
    for c in range(3):
        g = saliency(lin, x, target=c)
        torch.testing.assert_close(g, lin.weight[c].expand(4, 7).detach())


def test_ig_of_linear_model_is_weight_times_input_difference():
    """For f(x) = Wx + b, IG is exactly (x - x') * W_c (oracle), at any step count."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 2)
    x, base = torch.randn(3, 5), torch.randn(3, 5)
    attr, delta = integrated_gradients(lin, x, 1, base, n_steps=4)
    torch.testing.assert_close(attr, (x - base) * lin.weight[1].detach())
    assert delta.abs().max() < 1e-5


def test_ig_completeness_on_a_nonlinear_image_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(2, 1, 8, 8)
    base = torch.zeros_like(x)
    attr, _ = integrated_gradients(net, x, 2, base, n_steps=64)
    with torch.no_grad():
        fx, fb = net(x)[:, 2], net(base)[:, 2]
    for i in range(2):
        _check_completeness(attr[i].sum().item(), fx[i].item(), fb[i].item())


@pytest.mark.parametrize("name", list(ENCODERS))
def test_ig_completeness_on_token_embeddings(name):
    """Sum of per-token IG scores == logit(text) - logit(all embeddings zero), for every encoder."""
    C, M = ENCODERS[name]
    torch.manual_seed(0)
    model = M(C(vocab_size=40, n_classes=2)).eval()
    tokens = torch.randint(2, 40, (1, 9))
    scores, target, prob, delta = token_attributions(model, tokens, method="ig", n_steps=64)
    with torch.no_grad():
        fx = model(tokens)[0, target].item()
        h = model.embed.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        fb = model(tokens)[0, target].item()
        h.remove()
    assert scores.shape == (9,)
    _check_completeness(scores.sum().item(), fx, fb)
    assert 0.5 <= prob <= 1.0


def test_gradient_x_embedding_of_bag_model_matches_closed_form():
    """Bag of embeddings with a linear head: logit_c = w_c . mean(e_t) + b, so the per-token
    gradient x embedding is (w_c . e_t) / T (oracle)."""
    C, M = ENCODERS["bag"]
    torch.manual_seed(0)
    model = M(C(vocab_size=30, n_classes=2, emb_dim=8)).eval()
    tokens = torch.randint(2, 30, (1, 6))
    scores, target, _, _ = token_attributions(model, tokens, target=1, method="saliency")
    w = model.head.fc.weight[1].detach()
    expected = (model.embed.weight[tokens[0]].detach() @ w) / 6
    torch.testing.assert_close(scores, expected)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_attention_rows_where_the_recipe_declares_them(name):
    """Each text encoder's attention is read exactly where text-classify declares it: one
    row over the tokens per pooling hop, or one row (the Transformer's last layer, averaged
    over queries); a row of softmax weights sums to one."""
    from genforge.config import make_config
    from genforge.evaluate.explain import attention_rows
    from genforge.recipes import capabilities, get_recipe

    recipe = get_recipe("text-classify")
    caps = capabilities(recipe, make_config(recipe, {"model": name}))
    C, M = ENCODERS[name]
    torch.manual_seed(0)
    model = M(C(vocab_size=40, n_classes=2)).eval()
    tokens = torch.randint(2, 40, (1, 7))
    att = attention_rows(model, tokens, caps)
    if name not in ("attention", "transformer"):
        assert att is None
        return
    rows, names = att
    assert len(rows) == len(names) >= 1 and all(len(r) == 7 for r in rows)
    for r in rows:
        assert abs(sum(r) - 1) < 1e-4
    assert attention_rows(model, tokens, frozenset()) is None  # undeclared: not read


def test_unknown_method_is_one_clear_error():
    from genforge.evaluate.explain import explain_image

    with pytest.raises(ValueError, match="unknown attribution method 'shap'"):
        explain_image(None, None, "x.png", method="shap")


# ---------------------------------------------------------------------------------------
# `genforge explain` end to end on tiny real runs


def _tiny_run(tmp_path, rname, overrides):
    from genforge.config import make_config
    from genforge.recipes import get_recipe
    from genforge.train.trainer import fit

    recipe = get_recipe(rname)
    cfg = make_config(recipe, {**overrides, "max_steps": 2, "eval_every": 2, "plots": False,
                               "eval_batches": 1})
    return fit(rname, cfg, tmp_path / rname, log=lambda s: None)


def _cli(*args):
    from typer.testing import CliRunner

    from genforge.cli import app

    res = CliRunner().invoke(app, list(map(str, args)))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("model", ["attention", "transformer"])
def test_explain_text_run_prints_tokens_and_writes_html(tmp_path, model):
    run = _tiny_run(tmp_path, "text-classify", {"model": model, "batch_size": 8, "train_limit": 64,
                                                "max_len": 20, "model.emb_dim": 16})
    out = _cli("explain", run, "a gorgeous , witty film", "--out", tmp_path / "e.html")
    assert "gorgeous" in out and "completeness gap" in out and "attention" in out
    page = (tmp_path / "e.html").read_text()
    for tok in ("gorgeous", "witty", "integrated gradients", "attention"):
        assert tok in page
    out = _cli("explain", run, "dull", "--method", "saliency")
    assert (run / "explain" / "text_saliency.html").is_file()
    pred = _cli("predict", run, "a dull , lifeless film")
    assert pred.split("\t")[1] in ("negative", "positive")


@pytest.mark.parametrize("rname,overrides", [
    ("image-classify", {"model": "mlp", "data": "digits", "model.hidden": (8,), "batch_size": 16}),
    ("sequence-classify", {"model.hidden": 8, "batch_size": 16, "train_limit": 64}),
])
@pytest.mark.parametrize("method", ["ig", "saliency"])
def test_explain_image_run_writes_overlay_png(tmp_path, rname, overrides, method):
    from PIL import Image

    run = _tiny_run(tmp_path, rname, overrides)
    img = tmp_path / "input.png"
    Image.fromarray((torch.rand(20, 24) * 255).byte().numpy(), mode="L").save(img)  # resized
    out = _cli("explain", run, img, "--method", method, "--out", tmp_path / "x.png")
    assert "wrote" in out and ("completeness gap" in out) == (method == "ig")
    with Image.open(tmp_path / "x.png") as im:
        assert im.size[0] > 300 and im.size[1] > 100


def test_explain_rejects_a_missing_image_file(tmp_path):
    from genforge.evaluate.explain import explain_run

    run = _tiny_run(tmp_path, "image-classify", {"model": "mlp", "data": "digits",
                                                 "model.hidden": (8,), "batch_size": 16})
    with pytest.raises(FileNotFoundError, match="image file not found"):
        explain_run(run, str(tmp_path / "nope.png"))
