"""Shared building blocks (genforge/models/layers.py) and the trainer's CPU allocator setting:
the fast dropout keeps nn.Dropout's distribution, gradient and seeding; pooling before a
non-decreasing activation changes no value, gradient or parameter name; keeping freed memory
removes the per-step page faults."""
from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from genforge.models.cnn import CNN, CNNConfig
from genforge.models.layers import Dropout, conv_stage, dropout


def test_dropout_distribution_scale_and_gradient():
    torch.manual_seed(0)
    x = torch.randn(500, 800, requires_grad=True)
    y = Dropout(0.3)(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.003  # 400k draws: sd 0.0007
    assert torch.allclose(y[kept], x[kept] / 0.7)
    g = torch.randn_like(x)
    y.backward(g)
    assert torch.allclose(x.grad, torch.where(kept, g / 0.7, 0.0))


def test_dropout_follows_torch_seed_and_layout():
    x = torch.randn(8, 16, 5, 5)
    torch.manual_seed(3)
    a = dropout(x, 0.5)
    b = dropout(x, 0.5)
    torch.manual_seed(3)
    assert torch.equal(dropout(x, 0.5), a)  # the torch generator decides: resume stays exact
    assert not torch.equal(a, b)
    torch.manual_seed(3)
    cl = dropout(x.contiguous(memory_format=torch.channels_last), 0.5)
    assert torch.equal(cl, a)  # elementwise by position, whatever the memory layout


def test_dropout_off_paths():
    x = torch.randn(4, 6)
    d = Dropout(0.5).eval()
    assert d(x) is x
    assert dropout(x, 0.0) is x and dropout(x, 0.9, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    assert dropout(torch.randn(3, 4, dtype=torch.float64), 0.5).dtype == torch.float64
    assert repr(Dropout(0.2)) == "Dropout(p=0.2, inplace=False)"


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU])
def test_conv_stage_pools_first_with_same_values_gradients_and_names(act):
    torch.manual_seed(0)
    fast = nn.Sequential(*conv_stage(3, 8, act(), True, nn.MaxPool2d(2)))
    book = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), act(),
                         nn.MaxPool2d(2))
    assert book.load_state_dict(fast.state_dict()) is not None  # strict: the same names
    monotone = act is not nn.GELU  # GELU dips below zero: max-pool does not commute with it
    assert isinstance(fast[2], nn.MaxPool2d) == monotone
    x = torch.randn(4, 3, 9, 9)  # odd side: the pool drops the last row either way
    x[0, :, :2, :2] = 0.0  # ties inside a window
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = fast(xa), book(xb)
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.allclose(xa.grad, xb.grad, atol=1e-6)
    for (n, p), (_, q) in zip(fast.named_parameters(), book.named_parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), n


def test_cnn_checkpoint_names_unchanged():
    """The reorder moves only parameter-free modules: a CNN's state_dict keys are those of
    the textbook conv-BN-ReLU-pool order that earlier checkpoints were saved with."""
    m = CNN(CNNConfig(channels=(4, 8, 8), dense=8, batch_norm=True, in_channels=1, image_size=28,
                      n_classes=10))
    book = []
    for cin, cout, pool in ((1, 4, True), (4, 8, True), (8, 8, False)):
        book += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        book += [nn.MaxPool2d(2)] if pool else []
    assert list(m.features.state_dict()) == list(nn.Sequential(*book).state_dict())
    assert isinstance(m.features[2], nn.MaxPool2d) and isinstance(m.features[3], nn.ReLU)


def _thp_always() -> bool:
    try:
        return "[always]" in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
@pytest.mark.skipif(_thp_always(), reason="transparent huge pages 'always': the default path "
                    "faults in 2 MB pages, far fewer faults to compare")
def test_keep_freed_memory_removes_page_faults():
    """A small conv net's training step allocates its activations and gradients (6 MB each)
    and frees them at its end. By default glibc trims the freed heap top back to the OS (its
    trim threshold follows the largest block freed) or unmaps the blocks, and the next step
    faults the pages in again; kept, the steps after the first reuse the same pages."""
    code = textwrap.dedent("""
        import resource, sys, torch
        from genforge.train.device import keep_freed_memory
        if sys.argv[1] == "keep":
            assert keep_freed_memory()
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.BatchNorm2d(32),
                                  torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1))
        x = torch.randn(64, 1, 28, 28)
        def step():  # a training step's activations and gradients: 6 MB each, freed at its end
            net(x).square().mean().backward()
        faults = []
        for _ in range(10):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        print(sorted(faults[2:])[4])  # the median step after two warm-up steps
    """)
    faults = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                             check=True).stdout
        faults[mode] = float(out.split()[-1])
    assert faults["default"] > 2000, faults  # tens of MB of fresh 4 KB pages a step
    assert faults["keep"] < 50, faults
