"""Our metrics against scikit-learn (oracle) on random labels."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score

from genforge.evaluate.metrics import classification_metrics, format_report


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    g = torch.Generator().manual_seed(seed)
    k = 7
    y = torch.randint(0, k, (500,), generator=g)
    p = torch.randint(0, k - 1, (500,), generator=g)  # class k-1 never predicted: zero division path
    r = classification_metrics(p, y, k)
    yn, pn = y.numpy(), p.numpy()
    labels = list(range(k))
    assert r["accuracy"] == pytest.approx(accuracy_score(yn, pn), abs=1e-6)
    for name, fn in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        ref_macro = fn(yn, pn, average="macro", labels=labels, zero_division=0)
        ref_each = fn(yn, pn, average=None, labels=labels, zero_division=0)
        assert r[name] == pytest.approx(ref_macro, abs=1e-5), name
        np.testing.assert_allclose(r["per_class"][name], ref_each, atol=1e-5)
    np.testing.assert_array_equal(np.array(r["confusion_matrix"]), confusion_matrix(yn, pn, labels=labels))
    text = format_report(r, [f"c{i}" for i in range(k)])
    assert "confusion matrix" in text and "c6" in text
