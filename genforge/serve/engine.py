"""The models behind `genforge serve` and the worker pool that runs them.

The HTTP layer (genforge/serve/routers/) never calls a model itself. Every piece of model work
is an iterator (a text stream yields text pieces; an image or classification request yields
its one result) handed to a `WorkerPool`: a fixed set of threads that advance the admitted
iterators one item at a time in turn (round robin). So the event loop never blocks on a
model, every stream in flight makes progress (a long stream does not hold a worker while
32 others wait), and a cancelled job (its client went away) is dropped at its next turn.
Admission is bounded: more than `max_pending` jobs in flight is refused with 429.

Text streams of a decoder Transformer are continuously batched (genforge/serve/batching.py):
such a job's first turn prefills its prompt alone; then it joins its model's
`ContinuousBatcher`, which takes turns in the same round robin as one entry, each turn one
forward for every active stream of that model (`--no-batching`: one iterator per stream,
as before).
"""
from __future__ import annotations

import asyncio
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import torch

from genforge.recipes import recipe_name
from genforge.serve.batching import BatchedStream, ContinuousBatcher
from genforge.serve.errors import APIError
from genforge.train.checkpoint import RunError, load_run, read_config


@dataclass
class Limits:
    """Server limits (all settable on `genforge serve`)."""

    workers: int = 2  # threads running model work (torch gets cores // workers threads each)
    max_pending: int = 64  # jobs (one per generated choice/request) waiting or running; more -> 429
    max_tokens: int = 1024  # the most new tokens one choice may ask for
    chat_max_tokens: int = 256  # default max_tokens of a chat completion (completions: 16)
    max_prompt_tokens: int = 0  # 0 = the model's context (GPT) or 4096 (recurrent models)
    max_n: int = 8  # choices per request
    max_images: int = 16  # images per request
    max_inputs: int = 64  # inputs per classification request
    max_body_bytes: int = 4 << 20  # request bodies larger than this -> 413
    batching: bool = True  # decode the streams of one model in one batched forward per turn


@dataclass
class ServedModel:
    id: str
    run_dir: Path
    recipe_name: str
    recipe: Any
    cfg: Any
    model: torch.nn.Module
    task: str  # the recipe's TASK: which router serves it (genforge/serve/tasks.py)
    created: int
    capabilities: frozenset[str] = frozenset()  # what the recipe declares (genforge.recipes.CAPABILITIES)
    tokenizer: Any = None  # set by the text-generation router's prepare
    chat_template: Any = None
    batcher: Any = None  # its ContinuousBatcher, made on first use when batching applies


# the tasks `serve --quantize` applies to (Transformer text models, where int8 pays)
QUANTIZED_TASKS = ("text-generation", "embedding")


def load_models(run_dirs: list[str | Path], which: str = "best", device: str = "cpu",
                quantize: str | None = None) -> dict[str, ServedModel]:
    """Run folders -> served models by id (the run folder's name). Raises RunError with a
    clear message for anything that cannot be served. `quantize` ("int8"): the Linear
    weights of the text-generation and embedding runs (genforge/pretrained/quantize.py)."""
    from genforge.recipes import capabilities
    from genforge.serve.tasks import TASKS

    if not run_dirs:
        raise RunError("no runs to serve; pass one or more run folders (see `genforge runs`)")
    models: dict[str, ServedModel] = {}
    for rd in run_dirs:
        rd = Path(rd)
        _, recipe, _ = read_config(rd)
        task = getattr(recipe, "TASK", None)
        recipe, cfg, model = load_run(rd, which, device,
                                      quantize=quantize if task in QUANTIZED_TASKS else None)
        rname = recipe_name(recipe)
        if task not in TASKS:
            raise RunError(f"{rd} is a {rname} run, which the server cannot serve; serve text "
                           "generation, image generation or classifier runs")
        mid = rd.resolve().name
        if mid in models:
            raise RunError(f"two runs are named {mid!r} ({models[mid].run_dir} and {rd}); the "
                           "model id is the folder name, so rename one of them")
        sm = ServedModel(id=mid, run_dir=rd, recipe_name=rname, recipe=recipe, cfg=cfg,
                         model=model, task=task, created=int((rd / "config.json").stat().st_mtime),
                         capabilities=capabilities(recipe, cfg))
        TASKS[task].prepare(sm, rd)
        models[mid] = sm
    return models


# ---------------------------------------------------------------------------------------
# the worker pool


_DONE = object()


class Job:
    """One iterator advanced by the pool; its items go to the owning Batch's queue."""

    __slots__ = ("it", "tag", "batch", "cancelled")

    def __init__(self, it: Iterator, tag: Any, batch: "Batch"):
        self.it, self.tag, self.batch, self.cancelled = it, tag, batch, False


class Batch:
    """The jobs of one request (e.g. n choices). Iterate it (async) for (tag, item) pairs as
    the workers produce them; `cancel()` stops every job at its next turn."""

    def __init__(self, pool: "WorkerPool", loop: asyncio.AbstractEventLoop):
        self.pool, self.loop = pool, loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.jobs: list[Job] = []
        self.open = 0

    def _put(self, msg: tuple) -> None:  # from a worker thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, msg)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancel()

    def cancel(self) -> None:
        for j in self.jobs:
            j.cancelled = True

    async def items(self, poll=None, every: float = 0.25) -> AsyncIterator[tuple[Any, Any]]:
        """(tag, item) until every job is done; re-raises a job's exception. `poll`, an
        async callable returning True when the client has gone, is checked every `every`
        seconds by the clock, whether items are arriving or not: a generation that yields a
        token every few milliseconds must still notice that nobody waits for its answer."""
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + every
        try:
            while self.open:
                if poll is None:
                    tag, kind, val = await self.queue.get()
                else:
                    if loop.time() >= next_poll:
                        if await poll():
                            return
                        next_poll = loop.time() + every
                    try:
                        tag, kind, val = await asyncio.wait_for(self.queue.get(),
                                                                max(0.0, next_poll - loop.time()))
                    except asyncio.TimeoutError:
                        continue
                if kind is _DONE:
                    self.open -= 1
                elif kind == "error":
                    raise val
                else:
                    yield tag, val
        finally:
            self.cancel()


class WorkerPool:
    def __init__(self, workers: int = 2, max_pending: int = 64):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.max_pending = max_pending
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.pending = 0  # admitted jobs not finished
        self.running = 0  # jobs inside next() right now
        self.completed = 0
        self.cancelled = 0
        self._threads = [threading.Thread(target=self._work, name=f"genforge-worker-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def submit(self, iterators: list[tuple[Any, Iterator]], loop: asyncio.AbstractEventLoop) -> Batch:
        """Admit all the request's jobs or none (429 when the pool is full)."""
        batch = Batch(self, loop)
        with self._lock:
            if self.pending + len(iterators) > self.max_pending:
                raise APIError(429, f"the server is busy: {self.pending} generations are queued or "
                               f"running (limit {self.max_pending}); retry shortly",
                               code="queue_full")
            self.pending += len(iterators)
        batch.jobs = [Job(it, tag, batch) for tag, it in iterators]
        batch.open = len(batch.jobs)
        for j in batch.jobs:
            self._ready.put(j)
        return batch

    def stats(self) -> dict:
        return {"pending": self.pending, "running": self.running, "completed": self.completed,
                "cancelled": self.cancelled, "limit": self.max_pending, "workers": len(self._threads)}

    def close(self) -> None:
        for _ in self._threads:
            self._ready.put(None)

    def _finish(self, job: Job, cancelled: bool = False) -> None:
        close = getattr(job.it, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                pass
        with self._lock:
            self.pending -= 1
            if cancelled:
                self.cancelled += 1
            else:
                self.completed += 1

    def _prefill(self, job: Job) -> None:
        """A batched stream's first turn: its prompt alone and first token; then it joins its
        model's batcher (scheduled when idle)."""
        stream: BatchedStream = job.it
        stream.job = job
        try:
            pieces = stream.prefill()
        except BaseException as e:  # handed to the request, which answers it
            job.batch._put((job.tag, "error", e))
            self._finish(job)
            return
        for piece in pieces:
            job.batch._put((job.tag, "item", piece))
        if stream.finished:
            job.batch._put((job.tag, _DONE, None))
            self._finish(job)
        elif stream.batcher.join(stream):
            self._ready.put(stream.batcher)

    def _turn(self, batcher: ContinuousBatcher) -> None:
        """One batched decode step for every active stream of a model."""
        try:
            stepped, cancelled = batcher.turn()
        except BaseException as e:  # the batch's cache is now unknown: fail its streams
            for s in batcher.drop_all():
                s.job.batch._put((s.job.tag, "error", e))
                self._finish(s.job)
            stepped, cancelled = [], []
        for s in cancelled:
            self._finish(s.job, cancelled=True)
        for s, pieces in stepped:
            for piece in pieces:
                s.job.batch._put((s.job.tag, "item", piece))
            if s.finished:
                s.job.batch._put((s.job.tag, _DONE, None))
                self._finish(s.job)
        if batcher.release():
            self._ready.put(batcher)  # back of the line, like any job

    def _work(self) -> None:
        while True:
            job = self._ready.get()
            if job is None:
                return
            if isinstance(job, ContinuousBatcher):
                with self._lock:
                    self.running += 1
                try:
                    self._turn(job)
                finally:
                    with self._lock:
                        self.running -= 1
                continue
            if job.cancelled:
                self._finish(job, cancelled=True)
                continue
            with self._lock:
                self.running += 1
            if isinstance(job.it, BatchedStream):
                try:
                    self._prefill(job)
                finally:
                    with self._lock:
                        self.running -= 1
                continue
            try:
                item = next(job.it)
            except StopIteration:
                job.batch._put((job.tag, _DONE, None))
                self._finish(job)
                continue
            except BaseException as e:  # handed to the request, which answers it
                job.batch._put((job.tag, "error", e))
                self._finish(job)
                continue
            finally:
                with self._lock:
                    self.running -= 1
            job.batch._put((job.tag, "item", item))
            self._ready.put(job)  # back of the line: the other jobs get their turn


def torch_threads_for(workers: int) -> int:
    """Intra-op threads per worker: the cores shared out, at least one."""
    return max(1, (os.cpu_count() or 1) // workers)

