"""sqfx.sparsify's recovery: distillation lowers the loss with the masks fixed, is deterministic,
and resumes from its checkpoint to the same result as an uninterrupted run."""
import pytest
import torch
from torch import nn

import sqfx
import sqfx.sparsify.recover as recover_mod
from sqfx.format import block_view
from sqfx.sparsify import RecoveryConfig, SparsifyConfig


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def data(n=6):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(16, 16, generator=g) for _ in range(n)]


def run(steps=24, **kw):
    rec = RecoveryConfig(steps=steps, lr=5e-3, warmup_steps=2, progress=False, **kw)
    return sqfx.sparsify(tiny_mlp(), data(), SparsifyConfig(target_sparsity=0.7, method="magnitude",
                                                            recovery=rec, progress=False))


def test_recovery_lowers_the_loss_and_keeps_the_masks():
    model = run()
    report = model.sqfx_sparsify_report
    assert report.recovery["steps"] == 24 and report.recovery["resumed_from"] is None
    assert report.loss_final < 0.7 * report.loss_one_shot
    for fqn, mask in model.sqfx_masks.items():
        blocks = block_view(model.get_submodule(fqn).weight.detach(), (1, 4))
        assert torch.all(blocks[~mask] == 0)
        assert int((~mask).sum()) == round(0.7 * mask.numel())
    assert "recovery steps" in str(report)


def test_recovery_is_deterministic():
    a, b = run(steps=8), run(steps=8)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_cpu_budget_stops_early():
    model = run(steps=10_000, max_cpu_seconds=0.5)
    assert 0 < model.sqfx_sparsify_report.recovery["steps"] < 10_000


def test_resume_from_checkpoint(tmp_path, monkeypatch):
    whole = run(steps=12)
    calls = {"n": 0}
    real = recover_mod.distill_loss

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 7:
            raise KeyboardInterrupt  # stopped mid-run, after the checkpoint at step 5
        return real(*a, **kw)

    monkeypatch.setattr(recover_mod, "distill_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        run(steps=12, checkpoint_dir=str(tmp_path), checkpoint_every=5)
    monkeypatch.setattr(recover_mod, "distill_loss", real)
    assert (tmp_path / "recovery.pt").exists()
    resumed = run(steps=12, checkpoint_dir=str(tmp_path), checkpoint_every=5)
    assert resumed.sqfx_sparsify_report.recovery["resumed_from"] == 5
    assert resumed.sqfx_sparsify_report.recovery["steps"] == 12
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
