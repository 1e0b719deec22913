"""FID / IS-analogue math against numpy/scipy oracles, and the PNG grid writer."""
import io

import numpy as np
import pytest
import torch
from scipy import linalg

from genforge.evaluate.fid import (FeatureClassifier, class_consistency, fid_from_features,
                                   frechet_distance, gaussian_stats, inception_score)
from genforge.generate.images import make_grid, png_bytes, save_grid


def _scipy_fid(mu1, s1, mu2, s2):
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_matches_scipy_sqrtm_oracle():
    rng = np.random.default_rng(0)
    for d in (1, 5, 32):
        a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
        s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-6)


def test_frechet_distance_closed_forms():
    # 1-D: (m1-m2)^2 + (sd1-sd2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1)
    # identical Gaussians: 0; shifted only: |delta mu|^2
    s = np.diag([1.0, 2.0, 3.0])
    assert frechet_distance(np.zeros(3), s, np.zeros(3), s) == pytest.approx(0, abs=1e-9)
    assert frechet_distance(np.zeros(3), s, np.ones(3), s) == pytest.approx(3)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(3), s, np.zeros(2), np.eye(2))


def test_fid_of_gaussian_samples_converges_to_the_analytic_value():
    torch.manual_seed(0)
    d, n = 8, 20_000
    mu2 = torch.full((d,), 0.5)
    scale = torch.linspace(0.5, 2.0, d)
    x = torch.randn(n, d)
    y = torch.randn(n, d) * scale + mu2
    analytic = frechet_distance(np.zeros(d), np.eye(d), mu2.numpy(), np.diag(scale.numpy() ** 2))
    assert fid_from_features(x, y) == pytest.approx(analytic, rel=0.05)
    mu, cov = gaussian_stats(y)
    np.testing.assert_allclose(cov, np.cov(y.numpy(), rowvar=False), rtol=1e-10)
    np.testing.assert_allclose(mu, y.double().mean(0).numpy(), rtol=1e-10)


def test_inception_score_extremes_and_numpy_oracle():
    k = 10
    confident = torch.eye(k).repeat(5, 1)  # every class equally often, each sample certain
    assert inception_score(confident) == pytest.approx(k, rel=1e-6)
    same = torch.full((20, k), 1.0 / k)
    assert inception_score(same) == pytest.approx(1.0, rel=1e-6)
    p = torch.softmax(torch.randn(50, k), -1).double().numpy()
    marg = p.mean(0)
    oracle = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marg)), axis=1)))
    assert inception_score(torch.from_numpy(p)) == pytest.approx(oracle, rel=1e-9)
    assert class_consistency(torch.eye(3), torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_feature_classifier_reads_the_input_of_the_last_linear_layer():
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 6), torch.nn.ReLU())
    model = torch.nn.Sequential(body, torch.nn.Linear(6, 3))
    clf = FeatureClassifier(model, mean=0.5, std=0.25, shape=(1, 4, 4))
    x = torch.rand(7, 1, 4, 4)
    feats, probs = clf.features_and_probs(x, batch_size=3)
    xn = (x - 0.5) / 0.25
    torch.testing.assert_close(feats, body(xn))
    torch.testing.assert_close(probs, torch.softmax(model(xn), -1))
    with pytest.raises(ValueError, match="do not match"):
        clf.features_and_probs(torch.rand(2, 1, 5, 5))


def test_png_writer_roundtrips_through_pillow():
    from PIL import Image

    torch.manual_seed(0)
    imgs = torch.rand(10, 1, 5, 7)
    grid = make_grid(imgs, nrow=4, padding=1)
    assert grid.shape == (3 * 6 + 1, 4 * 8 + 1)
    im = Image.open(io.BytesIO(png_bytes(grid)))
    assert im.mode == "L" and im.size == (33, 19)
    assert np.array_equal(np.asarray(im), grid.numpy())
    # the first tile is the first image, quantised
    assert np.array_equal(np.asarray(im)[1:6, 1:8], (imgs[0, 0] * 255).round().byte().numpy())
    rgb = make_grid(torch.rand(2, 3, 4, 4), nrow=2, padding=0)
    im = Image.open(io.BytesIO(png_bytes(rgb)))
    assert im.mode == "RGB" and np.array_equal(np.asarray(im), rgb.numpy())
    with pytest.raises(ValueError, match="shape"):
        make_grid(torch.rand(2, 2, 4, 4))


def test_save_grid_writes_a_file(tmp_path):
    from PIL import Image

    path = save_grid(tmp_path / "sub" / "g.png", torch.rand(4, 1, 8, 8), nrow=2)
    with Image.open(path) as im:
        assert im.size == (2 * 10 + 2, 2 * 10 + 2)
