"""PNG plots (matplotlib, Agg backend): training curves, confusion matrices."""
from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: Path, out: Path) -> Path | None:
    """Loss and validation metrics against step, from the run's metrics.jsonl."""
    from genforge.train.checkpoint import read_metrics

    series: dict[str, tuple[list, list]] = {}
    for r in read_metrics(run_dir):
        for k, v in r.items():
            if k in ("step", "lr", "examples", "examples_per_s") or not isinstance(v, (int, float)):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(r["step"])
            ys.append(v)
    if not series:
        return None
    plt = _plt()
    losses = {k: s for k, s in series.items() if "loss" in k}
    others = {k: s for k, s in series.items() if "loss" not in k}
    ncols = 2 if others else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4), squeeze=False)
    for ax, group, title in ((axes[0][0], losses or series, "loss"),
                             (axes[0][-1], others, "metrics")):
        if not group:
            continue
        for k, (xs, ys) in group.items():
            ax.plot(xs, ys, label=k, marker="." if len(xs) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion(cm: list[list[int]], class_names: list[str], out: Path, title: str = "") -> Path:
    import numpy as np

    plt = _plt()
    arr = np.asarray(cm)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.6 * n))
    ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    thresh = arr.max() / 2 if arr.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(arr[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if arr[i, j] > thresh else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
