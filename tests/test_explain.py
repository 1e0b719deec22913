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


def test_unknown_method_is_one_clear_error():
    from genforge.evaluate.explain import explain_image

    with pytest.raises(ValueError, match="unknown attribution method 'shap'"):
        explain_image(None, None, "x.png", method="shap")
