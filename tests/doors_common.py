"""Models and a fresh-process runner shared by the three doors' tests (export, compile, AOTI)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sqfx

D = 32


class MLP(nn.Module):
    """Every ReLU spelling the issue names after a linear, plus an fp32 op between linears."""

    def __init__(self, d=D):
        super().__init__()
        self.fc1 = nn.Linear(d, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 16, bias=False)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = torch.relu(self.fc2(x)) * 1.5
        return self.fc3(x)


class Block(nn.Module):
    """A small pre-norm-free transformer block: reshapes by the input's own (dynamic) sizes."""

    def __init__(self, d=D, heads=4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
        x = self.ln(x + self.proj(a))
        return x + self.fc2(F.relu(self.fc1(x)))


CONFIG = sqfx.SparseQuantConfig(target_sparsity=0.5, overrides={"fc2": {"block": (2, 2)}})


def eager(model, config=CONFIG, example=None):
    """The first door, the oracle for the other two."""
    example = example if example is not None else (torch.randn(2, 3, D),)
    return sqfx.prepare_and_convert(model, config, example_inputs=example)


def run_fresh(script: str, tmp_path: Path, timeout: int = 600) -> str:
    """Runs `script` in a fresh Python process (nothing imported); fails the test on a non-zero exit."""
    path = tmp_path / "fresh_process.py"
    path.write_text(textwrap.dedent(script))
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"fresh process failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr[-6000:]}")
    return proc.stdout


def run_fresh_expect_failure(script: str, tmp_path: Path, timeout: int = 300) -> str:
    path = tmp_path / "fresh_process_fails.py"
    path.write_text(textwrap.dedent(script))
    proc = subprocess.run([sys.executable, str(path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode != 0, f"expected a failure, got rc=0:\n{proc.stdout}"
    return proc.stdout + proc.stderr


def shapes_sweep():
    """(batch, seq) pairs, 1 included: exported programs do not specialize on size 1."""
    return [(1, 1), (2, 5), (3, 1), (7, 9), (16, 4)]
