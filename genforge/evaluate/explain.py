"""Why did the classifier decide that? Saliency, integrated gradients and attention weights.

Attribution methods come from Captum (PyTorch's interpretability library):
  saliency               d logit_c / d input (Simonyan et al. 2014, "Deep Inside Convolutional
                         Networks"); for images shown as |gradient|, max over channels
  integrated gradients   (x - x') * integral_0^1 d logit_c(x' + a (x - x')) / dx da
                         (Sundararajan et al. 2017, "Axiomatic Attribution for Deep Networks");
                         completeness: the attributions sum to logit_c(x) - logit_c(x'), and the
                         gap is reported as `delta`
Images attribute to pixels (baseline: an all-black image); texts attribute to token embeddings
(baseline: the all-zero embedding, which is what `<pad>` embeds to) and sum over the embedding
dimension to one score per token. Attributions are of the predicted class's logit.

`explain_run(RUN, INPUT)` is what `genforge explain` does: image runs write a PNG (input,
attribution, overlay); text runs print tokens coloured by attribution and write an HTML page,
with the model's attention weights where it has them.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients, Saliency

METHODS = ("ig", "saliency")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose one of: {', '.join(METHODS)}")


# ---------------------------------------------------------------------------------------
# attributions


def saliency(model, x: torch.Tensor, target: int | torch.Tensor) -> torch.Tensor:
    """Signed gradient of the target logit w.r.t. the input, same shape as x."""
    x = x.detach().clone().requires_grad_(True)
    return Saliency(model).attribute(x, target=target, abs=False).detach()


def integrated_gradients(model, x: torch.Tensor, target: int | torch.Tensor,
                         baseline: torch.Tensor | None = None, n_steps: int = 64
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (attributions shaped like x, completeness gap per example:
    sum(attributions) - (f(x) - f(baseline)))."""
    baseline = torch.zeros_like(x) if baseline is None else baseline
    attr, delta = IntegratedGradients(model).attribute(
        x, baselines=baseline, target=target, n_steps=n_steps, return_convergence_delta=True)
    return attr.detach(), delta.detach()


@dataclass
class TokenAttribution:
    tokens: list[str]
    scores: list[float]  # one per token, signed: > 0 pushes towards `label`
    label: str
    probability: float
    method: str
    delta: float | None = None  # IG completeness gap (logit units)
    attention: list[list[float]] | None = None  # rows of weights over tokens, where the model has them
    attention_names: list[str] | None = None


def token_attributions(model, tokens: torch.Tensor, target: int | None = None,
                       method: str = "ig", n_steps: int = 64):
    """tokens (1, T) without padding -> (scores (T,), target, probability, delta or None).
    Attributes the target logit to the token embeddings (`model.embed`)."""
    _check_method(method)
    model.eval()
    with torch.no_grad():
        probs = model(tokens).softmax(-1)[0]
    target = int(probs.argmax()) if target is None else target
    if method == "ig":
        # baseline ids = pad: its embedding is zero, so the path runs from "no words" to the text
        lig = LayerIntegratedGradients(model, model.embed)
        attr, delta = lig.attribute(tokens, baselines=torch.zeros_like(tokens), target=target,
                                    n_steps=n_steps, return_convergence_delta=True)
        return attr.sum(-1)[0].detach(), target, probs[target].item(), float(delta[0])
    # saliency on embeddings: gradient . embedding (first-order Taylor of the logit per token)
    emb = {}

    def keep(_m, _i, out):
        out.retain_grad()
        emb["e"] = out

    h = model.embed.register_forward_hook(keep)
    try:
        model.zero_grad()
        model(tokens)[0, target].backward()
    finally:
        h.remove()
    e = emb["e"]
    return (e.grad * e).sum(-1)[0].detach(), target, probs[target].item(), None


def attention_rows(model, tokens: torch.Tensor, capabilities: frozenset[str]
                   ) -> tuple[list[list[float]], list[str]] | None:
    """The model's own attention over the tokens, where its recipe declares it (see
    genforge.recipes.CAPABILITIES): self-attentive pooling hops, or the Transformer's last
    layer (head mean) averaged over query positions."""
    with torch.no_grad():
        if "self-attention" in capabilities:
            model(tokens, need_weights=True)
            return [model.attention[0].mean(0).tolist()], ["last-layer attention (mean over queries)"]
        if "attention-pooling" in capabilities:
            model(tokens)
            A = model.attention  # (B, hops, T)
            return [row.tolist() for row in A[0]], [f"attention hop {i + 1}" for i in range(A.shape[1])]
    return None


# ---------------------------------------------------------------------------------------
# rendering


def _rgb(score: float, scale: float) -> tuple[int, int, int]:
    """Green for positive (towards the label), red for negative, white at zero."""
    a = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    if score >= 0:
        return int(255 - 155 * a), 255, int(255 - 155 * a)
    return 255, int(255 - 155 * a), int(255 - 155 * a)


def terminal_text(ta: TokenAttribution):
    """A rich Text: tokens on backgrounds coloured by attribution."""
    from rich.text import Text

    scale = max((abs(s) for s in ta.scores), default=0.0)
    t = Text()
    for tok, s in zip(ta.tokens, ta.scores):
        r, g, b = _rgb(s, scale)
        t.append(tok, style=f"black on #{r:02x}{g:02x}{b:02x}")
        t.append(" ")
    return t


def write_html(ta: TokenAttribution, path: str | Path, text: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def row(scores, title):
        scale = max((abs(s) for s in scores), default=0.0)
        spans = "".join(
            f'<span title="{s:+.4f}" style="background:rgb{_rgb(s, scale)};padding:2px 3px;'
            f'margin:1px;border-radius:3px;display:inline-block">{html.escape(tok)}</span>'
            for tok, s in zip(ta.tokens, scores))
        return f"<h3>{html.escape(title)}</h3><div style='line-height:2'>{spans}</div>"

    name = {"ig": "integrated gradients", "saliency": "gradient x embedding"}[ta.method]
    parts = [f"<h2>{html.escape(ta.label)} ({ta.probability:.3f})</h2>",
             f"<p>{html.escape(text)}</p>" if text else "",
             row(ta.scores, f"{name} on token embeddings (green: towards {ta.label}, red: against)")]
    if ta.delta is not None:
        parts.append(f"<p>completeness gap: {ta.delta:+.2e} (logit units)</p>")
    for scores, title in zip(ta.attention or [], ta.attention_names or []):
        parts.append(row(scores, title))
    path.write_text("<!doctype html><meta charset='utf-8'><title>genforge explain</title>"
                    "<body style='font-family:sans-serif;max-width:60em'>" + "".join(parts)
                    + "</body>", encoding="utf-8")
    return path


def overlay_png(image: torch.Tensor, attr: torch.Tensor, path: str | Path, title: str,
                signed: bool) -> Path:
    """image (C, H, W) in [0, 1], attr (H, W) -> PNG with input | attribution | overlay."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = image.permute(1, 2, 0).numpy()
    img = img[:, :, 0] if img.shape[2] == 1 else img
    a = attr.numpy()
    m = float(abs(a).max()) or 1.0
    cmap, lim = ("bwr", (-m, m)) if signed else ("hot", (0, m))
    fig, ax = plt.subplots(1, 3, figsize=(9, 3.3))
    ax[0].imshow(img, cmap="gray", vmin=0, vmax=1)
    ax[0].set_title("input")
    im = ax[1].imshow(a, cmap=cmap, vmin=lim[0], vmax=lim[1])
    ax[1].set_title("attribution")
    fig.colorbar(im, ax=ax[1], fraction=0.046)
    ax[2].imshow(img, cmap="gray", vmin=0, vmax=1)
    ax[2].imshow(a, cmap=cmap, vmin=lim[0], vmax=lim[1], alpha=0.55)
    ax[2].set_title("overlay")
    for x in ax:
        x.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------
# runs


def explain_text(model, cfg, text: str, method: str = "ig", n_steps: int = 64,
                 capabilities: frozenset[str] = frozenset()) -> TokenAttribution:
    """`capabilities`: what the run's recipe declares; attention rows are added where it
    declares attention weights."""
    from genforge.recipes.text_classify import vocabulary

    vocab = vocabulary(cfg)
    ids = vocab.encode(text, cfg.max_len)
    tokens = torch.tensor([ids])
    scores, target, prob, delta = token_attributions(model, tokens, None, method, n_steps)
    att = attention_rows(model, tokens, capabilities)
    return TokenAttribution(vocab.tokens(text, cfg.max_len), scores.tolist(), cfg.classes[target],
                            prob, method, delta, *(att or (None, None)))


def _image_input(cfg, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (model input (1, C, H, W) [or (1, H, W) for row sequence models], display image
    (C, H, W) in [0, 1])."""
    from genforge.data.images import load_image

    channels = getattr(cfg, "channels", 1) or 1
    x = load_image(path, channels, (cfg.height, cfg.width)).float() / 255.0  # (C, H, W)
    return ((x - cfg.mean) / cfg.std)[None], x


def explain_image(model, cfg, path: str, method: str = "ig", n_steps: int = 64,
                  out: str | Path | None = None) -> tuple[Path, str, float, float | None]:
    """-> (PNG path, label, probability, IG completeness gap or None)."""
    _check_method(method)
    x, shown = _image_input(cfg, path)
    model.eval()
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    target = int(probs.argmax())
    delta = None
    if method == "ig":
        attr, d = integrated_gradients(model, x, target, torch.full_like(x, -cfg.mean / cfg.std),
                                       n_steps)  # baseline: a black image, normalised
        a, delta = attr[0].sum(0), float(d[0])
    else:
        a = saliency(model, x, target)[0].abs().amax(0)
    label = cfg.classes[target]
    title = (f"{Path(path).name}: {label} ({probs[target]:.3f}) - "
             + ("integrated gradients (black baseline)" if method == "ig" else "saliency |grad|"))
    out = Path(out) if out else Path(path).with_name(f"{Path(path).stem}_{method}.png")
    return overlay_png(shown, a, out, title, signed=method == "ig"), label, probs[target].item(), delta


def explain_audio(model, cfg, recipe, path: str, method: str = "ig", n_steps: int = 64,
                  out: str | Path | None = None) -> tuple[Path, str, float, float | None]:
    """Attribution over a clip's log-mel spectrogram (the recipe's `audio_input` makes it);
    drawn with low frequencies at the bottom, time to the right. -> as explain_image."""
    from genforge.data.audio import LOG_FLOOR

    _check_method(method)
    x, _ = recipe.audio_input(cfg, [path])  # (1, 1, n_mels, T), normalised
    model.eval()
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    target = int(probs.argmax())
    delta = None
    if method == "ig":  # baseline: silence (the log floor), normalised like the input
        silence = (torch.log(torch.tensor(LOG_FLOOR)) - cfg.mean) / cfg.std
        attr, d = integrated_gradients(model, x, target, torch.full_like(x, float(silence)), n_steps)
        a, delta = attr[0, 0], float(d[0])
    else:
        a = saliency(model, x, target)[0, 0].abs()
    shown = x[0, 0]
    shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp(min=1e-8)
    label = cfg.classes[target]
    title = (f"{Path(path).name}: {label} ({probs[target]:.3f}) - log-mel, "
             + ("integrated gradients (silence baseline)" if method == "ig" else "saliency |grad|"))
    out = Path(out) if out else Path(path).with_name(f"{Path(path).stem}_{method}.png")
    return (overlay_png(shown.flip(0)[None], a.flip(0), out, title, signed=method == "ig"), label,
            probs[target].item(), delta)


def attention_png(weights: torch.Tensor, source: list[str], target: list[str], path: str | Path,
                  title: str) -> Path:
    """A translation's cross-attention (target tokens x source tokens) as a heatmap PNG: row i
    is where the model looked while writing target token i."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = weights.float().numpy()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(source) + 2), max(3, 0.35 * len(target) + 1.5)))
    ax.imshow(w, cmap="viridis", aspect="auto", vmin=0.0)
    # byte-level BPE marks a leading space with "Ġ"; show it as a real space
    ax.set_xticks(range(len(source)), [s.replace("\u0120", " ") for s in source], rotation=90)
    ax.set_yticks(range(len(target)), [t.replace("\u0120", " ") for t in target])
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def explain_run(run: str | Path, inp: str, method: str = "ig", out: str | Path | None = None,
                checkpoint: str = "best", n_steps: int = 64, echo=print) -> Path:
    """What `genforge explain RUN INPUT` does. Returns the file written."""
    from genforge.recipes import capabilities
    from genforge.train.checkpoint import load_run

    _check_method(method)
    run = Path(run)
    recipe, cfg, model = load_run(run, checkpoint)
    caps = capabilities(recipe, cfg)
    if "text-input" in caps:
        text = Path(inp).read_text() if inp.endswith(".txt") and Path(inp).is_file() else inp
        ta = explain_text(model, cfg, text, method, n_steps, caps)
        from rich.console import Console

        con = Console(highlight=False)
        con.print(f"{ta.label} ({ta.probability:.3f})  "
                  f"[{'integrated gradients' if method == 'ig' else 'gradient x embedding'}; "
                  f"green: towards {ta.label}, red: against]")
        con.print(terminal_text(ta))
        if ta.delta is not None:
            con.print(f"completeness gap {ta.delta:+.2e}")
        for scores, name in zip(ta.attention or [], ta.attention_names or []):
            top = sorted(zip(scores, ta.tokens), reverse=True)[:5]
            con.print(f"{name}: " + ", ".join(f"{t} {s:.2f}" for s, t in top))
        out = Path(out) if out else run / "explain" / f"text_{method}.html"
        path = write_html(ta, out, text)
    elif "image-input" in caps:
        if not Path(inp).is_file():
            raise FileNotFoundError(f"image file not found: {inp}")
        out = Path(out) if out else run / "explain" / f"{Path(inp).stem}_{method}.png"
        path, label, prob, delta = explain_image(model, cfg, inp, method, n_steps, out)
        gap = f", completeness gap {delta:+.2e}" if delta is not None else ""
        echo(f"{label} ({prob:.3f}){gap}")
    elif "audio-input" in caps:
        if not Path(inp).is_file():
            raise FileNotFoundError(f"audio file not found: {inp}")
        out = Path(out) if out else run / "explain" / f"{Path(inp).stem}_{method}.png"
        path, label, prob, delta = explain_audio(model, cfg, recipe, inp, method, n_steps, out)
        gap = f", completeness gap {delta:+.2e}" if delta is not None else ""
        echo(f"{label} ({prob:.3f}){gap}")
    elif "translation" in caps:
        text = Path(inp).read_text() if inp.endswith(".txt") and Path(inp).is_file() else inp
        att = recipe.cross_attention(model, cfg, text.strip(), run)
        if att["truncated"]:
            echo(f"note: the source is longer than the model's maximum of {cfg.model_cfg.max_len} "
                 "tokens; its first tokens were translated")
        echo(att["translation"])
        out = Path(out) if out else run / "explain" / "cross_attention.png"
        path = attention_png(att["weights"], att["source_tokens"], att["target_tokens"], out,
                             f"{run.name}: cross-attention")
    else:
        raise ValueError(f"{run} is a {cfg.model} run; explain handles image, text and audio "
                         "classifiers and translation runs")
    echo(f"wrote {path}")
    return path


__all__ = ["METHODS", "TokenAttribution", "attention_rows", "explain_audio", "explain_image", "explain_run",
           "explain_text", "integrated_gradients", "overlay_png", "saliency",
           "token_attributions", "write_html"]
