"""A tiny model factory for the CLI tests (`tests.cli_factory:make_mlp`)."""
import torch
from torch import nn


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.GELU(), nn.Linear(48, 16))


def example_inputs():
    return (torch.randn(3, 32, generator=torch.Generator().manual_seed(1)),)


NOT_A_MODULE = 42


class Functional(nn.Module):
    """F.linear over parameters plus a fused nn.Linear -> nn.ReLU (the CLI used to miss the first
    and name the second after its ReLU)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.act = nn.ReLU()
        self.fc2 = nn.Parameter(torch.randn(16, 64) * 0.1)

    def forward(self, x):
        return nn.functional.linear(self.act(self.fc1(x)), self.fc2)


def make_functional() -> nn.Module:
    torch.manual_seed(0)
    return Functional()


def calibration_batches():
    """Unlabeled inputs for `python -m sqfx sparsify --data tests.cli_factory:calibration_batches`."""
    g = torch.Generator().manual_seed(2)
    return [torch.randn(8, 32, generator=g) for _ in range(4)]
