"""Classification metrics (torchmetrics): accuracy, macro/per-class precision, recall, F1,
confusion matrix."""
from __future__ import annotations

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)


def classification_metrics(preds: torch.Tensor, target: torch.Tensor, n_classes: int) -> dict:
    """preds/target: int class ids (N,). Returns floats plus per-class lists and the
    confusion matrix (rows = true class, columns = predicted class)."""
    preds, target = preds.long().cpu(), target.long().cpu()
    kw = dict(num_classes=n_classes)
    # zero_division=0 matches scikit-learn's default behaviour for classes never predicted
    return {
        "accuracy": multiclass_accuracy(preds, target, average="micro", **kw).item(),
        "precision": multiclass_precision(preds, target, average="macro", zero_division=0, **kw).item(),
        "recall": multiclass_recall(preds, target, average="macro", zero_division=0, **kw).item(),
        "f1": multiclass_f1_score(preds, target, average="macro", zero_division=0, **kw).item(),
        "per_class": {
            "precision": multiclass_precision(preds, target, average="none", zero_division=0, **kw).tolist(),
            "recall": multiclass_recall(preds, target, average="none", zero_division=0, **kw).tolist(),
            "f1": multiclass_f1_score(preds, target, average="none", zero_division=0, **kw).tolist(),
        },
        "confusion_matrix": multiclass_confusion_matrix(preds, target, **kw).tolist(),
    }


@torch.no_grad()
def evaluate_classifier(model, batches, n_classes: int) -> dict:
    """Mean cross-entropy and `classification_metrics` of `model` over (x, y) batches."""
    import torch.nn.functional as F

    device = next(model.parameters()).device
    preds, targets, total, n = [], [], torch.zeros((), device=device), 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x).float()
        total += F.cross_entropy(logits, y, reduction="sum")  # summed on device: one sync at the end
        n += len(y)
        preds.append(logits.argmax(-1).cpu())
        targets.append(y.cpu())
    report = classification_metrics(torch.cat(preds), torch.cat(targets), n_classes)
    return {"loss": total.item() / max(n, 1), **report}


def top_predictions(probs: torch.Tensor, classes: list[str], inputs: list, top: int = 3) -> list[dict]:
    """Class probabilities (N, C) -> [{input, label, probability, top: [(label, p), ...]}].
    `input` is each input as text (a path, a text), or "image i" for encoded image bytes."""
    out = []
    for i, (item, p) in enumerate(zip(inputs, probs.float().cpu())):
        vals, idx = p.topk(max(1, min(top, len(classes))))
        name = f"image {i}" if isinstance(item, (bytes, bytearray)) else str(item)
        out.append({"input": name, "label": classes[idx[0]], "probability": vals[0].item(),
                    "top": [(classes[i], v.item()) for v, i in zip(vals, idx)]})
    return out


def scalar_metrics(report: dict) -> dict[str, float]:
    return {k: v for k, v in report.items() if isinstance(v, float)}


def format_report(report: dict, class_names: list[str]) -> str:
    """Per-class table and confusion matrix as plain text."""
    lines = [f"accuracy {report['accuracy']:.4f}  macro precision {report['precision']:.4f}  "
             f"macro recall {report['recall']:.4f}  macro F1 {report['f1']:.4f}", ""]
    w = max(8, max(len(c) for c in class_names))
    lines.append(f"{'class':<{w}}  precision  recall     f1")
    pc = report["per_class"]
    for i, c in enumerate(class_names):
        lines.append(f"{c:<{w}}  {pc['precision'][i]:9.4f}  {pc['recall'][i]:6.4f}  {pc['f1'][i]:6.4f}")
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    cm = report["confusion_matrix"]
    cw = max(5, max(len(str(v)) for row in cm for v in row) + 1)
    lines.append(" " * w + "".join(f"{i:>{cw}}" for i in range(len(cm))))
    for i, row in enumerate(cm):
        lines.append(f"{class_names[i][:w]:<{w}}" + "".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)
