"""sqfx.sparsify's recovery: distillation lowers the loss with the masks fixed, is deterministic,
and resumes from its checkpoint to the same result as an uninterrupted run."""
import pytest
import torch
from torch import nn

import sqfx
import sqfx.sparsify.recover as recover_mod
from sqfx.config import ConfigError
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


def run_gradual(steps=24, **kw):
    return run(steps=steps, schedule="gradual", prune_until=0.5, prune_every=3, **kw)


def test_gradual_final_masks_match_the_one_shot_block_counts():
    one_shot = sqfx.sparsify(tiny_mlp(), data(), SparsifyConfig(target_sparsity=0.7, method="magnitude",
                                                                 progress=False))
    model = run_gradual()
    assert model.sqfx_masks.keys() == one_shot.sqfx_masks.keys()
    for fqn, mask in model.sqfx_masks.items():
        assert mask.shape == one_shot.sqfx_masks[fqn].shape
        assert int(mask.sum()) == int(one_shot.sqfx_masks[fqn].sum())
        blocks = block_view(model.get_submodule(fqn).weight.detach(), (1, 4))
        assert torch.all(blocks[~mask] == 0)
    rows = {r.fqn: r.sparsity for r in model.sqfx_sparsify_report.layers}
    assert all(abs(rows[f] - (1 - float(m.float().mean()))) < 1e-9 for f, m in model.sqfx_masks.items())


def test_gradual_sparsity_ramps_monotonically():
    history = run_gradual().sqfx_sparsify_report.recovery["sparsity"]
    steps, sparsity = zip(*history)
    assert steps == (0, 3, 6, 9, 12) and sparsity[0] == 0
    assert all(a < b for a, b in zip(sparsity, sparsity[1:]))
    assert abs(sparsity[-1] - 0.7) < 0.01


def test_gradual_stopped_early_still_ends_at_the_final_counts():
    model = run_gradual(steps=10_000, max_cpu_seconds=0.3)
    assert model.sqfx_sparsify_report.recovery["steps"] < 5000
    for mask in model.sqfx_masks.values():
        assert int((~mask).sum()) == round(0.7 * mask.numel())


def test_gradual_resume_mid_ramp(tmp_path, monkeypatch):
    whole = run_gradual(steps=12)
    calls = {"n": 0}
    real = recover_mod.distill_loss

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] > 4:
            raise KeyboardInterrupt  # stopped at step 4, mid-ramp (the ramp ends at step 6)
        return real(*a, **kw)

    monkeypatch.setattr(recover_mod, "distill_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        run_gradual(steps=12, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    monkeypatch.setattr(recover_mod, "distill_loss", real)
    state = torch.load(tmp_path / "recovery.pt", weights_only=False)
    assert state["step"] == 4 and 0 < state["sparsity"][-1][1] < 0.7
    resumed = run_gradual(steps=12, checkpoint_dir=str(tmp_path), checkpoint_every=2)
    assert resumed.sqfx_sparsify_report.recovery["resumed_from"] == 4
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert all(torch.equal(m, resumed.sqfx_masks[k]) for k, m in whole.sqfx_masks.items())
    assert whole.sqfx_sparsify_report.recovery["sparsity"] == resumed.sqfx_sparsify_report.recovery["sparsity"]


@pytest.mark.parametrize("kw, match", [({"schedule": "cubic"}, "schedule"), ({"prune_until": 0}, "prune_until"),
                                       ({"prune_until": 1.5}, "prune_until"), ({"prune_every": 0}, "prune_every"),
                                       ({"prune_every": 2.5}, "prune_every")])
def test_gradual_bad_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        RecoveryConfig(**kw)
