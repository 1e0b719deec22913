import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# tests read the real datasets from ../shared/data unless the caller points elsewhere
os.environ.setdefault("GENFORGE_DATA", str((ROOT.parent / "shared" / "data").resolve()))
# nothing is reachable from the test machines: fail fast instead of trying to download
os.environ.setdefault("GENFORGE_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests run many tiny models; one intra-op thread avoids oversubscribing 2 cores."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def data_root() -> Path:
    return Path(os.environ["GENFORGE_DATA"])


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory) -> dict:
    """The tiny real runs the serving tests load (tests/serving.py), trained once per test
    process and only read afterwards."""
    from serving import train_runs

    return train_runs(tmp_path_factory.mktemp("serve-runs"))


@pytest.fixture(scope="session")
def imagegen_runs(tmp_path_factory) -> dict:
    """One-step image-generate runs (gan, diffusion, vae-mlp) of the recipe's TEST_CONFIGS,
    trained once per test process and only read afterwards."""
    from genforge.config import make_config
    from genforge.recipes import get_recipe
    from genforge.train.trainer import fit

    recipe = get_recipe("image-generate")
    root = tmp_path_factory.mktemp("imagegen-runs")
    return {name: fit("image-generate", make_config(recipe, {**recipe.TEST_CONFIGS[name], "max_steps": 1}),
                      root / name, log=lambda s: None)
            for name in ("gan", "diffusion", "vae-mlp")}
