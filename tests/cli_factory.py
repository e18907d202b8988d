"""A tiny model factory for the CLI tests (`tests.cli_factory:make_mlp`)."""
import torch
from torch import nn


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 16))


def example_inputs():
    return (torch.randn(3, 32, generator=torch.Generator().manual_seed(1)),)


NOT_A_MODULE = 42


def make_deep() -> nn.Module:
    """Enough layers for the conversion progress bar (sqfx.cli.PROGRESS_MIN_LAYERS)."""
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(16, 16) for _ in range(10)])


def calibration_batches():
    """Unlabeled inputs for `python -m sqfx sparsify --data tests.cli_factory:calibration_batches`."""
    g = torch.Generator().manual_seed(2)
    return [torch.randn(8, 32, generator=g) for _ in range(4)]
