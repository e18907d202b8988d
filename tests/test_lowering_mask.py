"""Mask sources (each one, and their order), block-magnitude pruning, unstructured masks."""
# These tests read the stored block structure, so they pack with layout="sparse" (the default
# "auto" may store a low-sparsity layer densely, dropped blocks as zeros).
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import sqfx
from sqfx_testing import packed_layer
from sqfx.lowering import block_magnitude_mask, choose_mask, collect_module_masks
from sqfx.lowering.mask import (SOURCE_CONFIG, SOURCE_FAKE_SPARSITY, SOURCE_NONE, SOURCE_PRUNE,
                                SOURCE_QCONFIG)


def block_structured(n, k, block, seed):
    g = torch.Generator().manual_seed(seed)
    rb, cb = block
    bm = torch.rand(-(-n // rb), -(-k // cb), generator=g) > 0.5
    return bm, bm.repeat_interleave(rb, 0).repeat_interleave(cb, 1)[:n, :k].float()


SPARSE = sqfx.SparseQuantConfig(layout="sparse")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        return self.fc(x)


def stored_block_mask(converted):
    return packed_layer(converted, "fc").block_mask()


def test_config_mask():
    bm, _ = block_structured(8, 16, (1, 4), 1)
    out = sqfx.prepare_and_convert(Net(), sqfx.SparseQuantConfig(layout="sparse", masks={"fc": bm}))
    assert out.sqfx_report["fc"].mask_source == SOURCE_CONFIG
    assert torch.equal(stored_block_mask(out), bm)


def test_qconfig_mask():
    bm, elem = block_structured(8, 16, (1, 4), 2)
    net = Net()
    net.fc.qconfig = type("QC", (), {"mask": elem})()
    out = sqfx.prepare_and_convert(net, SPARSE)
    assert out.sqfx_report["fc"].mask_source == SOURCE_QCONFIG
    assert torch.equal(stored_block_mask(out), bm)


def test_fake_sparsity_parametrization():
    from torch.ao.pruning import FakeSparsity
    from torch.nn.utils import parametrize

    bm, elem = block_structured(8, 16, (1, 4), 3)
    net = Net()
    parametrize.register_parametrization(net.fc, "weight", FakeSparsity(elem))
    out = sqfx.prepare_and_convert(net, SPARSE)
    assert out.sqfx_report["fc"].mask_source == SOURCE_FAKE_SPARSITY
    assert torch.equal(stored_block_mask(out), bm)
    assert parametrize.is_parametrized(net.fc, "weight")  # the input model is untouched


def test_torch_prune():
    bm, elem = block_structured(8, 16, (1, 4), 4)
    net = Net()
    prune.custom_from_mask(net.fc, "weight", elem)
    out = sqfx.prepare_and_convert(net, SPARSE)
    assert out.sqfx_report["fc"].mask_source == SOURCE_PRUNE
    assert torch.equal(stored_block_mask(out), bm)
    assert hasattr(net.fc, "weight_mask")


def test_first_found_wins():
    bm_cfg, _ = block_structured(8, 16, (1, 4), 5)
    _, elem_prune = block_structured(8, 16, (1, 4), 6)
    bm_q, elem_q = block_structured(8, 16, (1, 4), 7)
    net = Net()
    prune.custom_from_mask(net.fc, "weight", elem_prune)
    net.fc.qconfig = type("QC", (), {"mask": elem_q})()
    out = sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(layout="sparse", target_sparsity=0.9))
    assert out.sqfx_report["fc"].mask_source == SOURCE_QCONFIG
    assert torch.equal(stored_block_mask(out), bm_q)
    out = sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(layout="sparse", masks={"fc": bm_cfg}))
    assert torch.equal(stored_block_mask(out), bm_cfg)


def test_target_sparsity_and_no_mask():
    net = Net()
    out = sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(layout="sparse", target_sparsity=0.75, prune_norm="l2"))
    rep = out.sqfx_report["fc"]
    assert rep.mask_source == "magnitude l2 0.75" and rep.sparsity == pytest.approx(0.75)
    out = sqfx.prepare_and_convert(net, SPARSE)
    assert out.sqfx_report["fc"].mask_source == SOURCE_NONE and out.sqfx_report["fc"].sparsity == 0.0


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_block_magnitude_keeps_the_largest_blocks(norm):
    w = torch.zeros(2, 8)
    w[0, :4] = torch.tensor([4.0, 0, 0, 0])      # l1 4, l2 4
    w[0, 4:] = torch.tensor([1.5, 1.5, 1.5, 0])  # l1 4.5, l2 ~2.6
    w[1, :4] = 0.1
    w[1, 4:] = 5.0
    keep = block_magnitude_mask(w, (1, 4), 0.5, norm)
    if norm == "l1":
        assert keep.tolist() == [[False, True], [False, True]]
    else:
        assert keep.tolist() == [[True, False], [False, True]]


def test_block_magnitude_partial_edge_blocks():
    w = torch.randn(5, 7)
    keep = block_magnitude_mask(w, (2, 4), 0.5, "l1")
    assert keep.shape == (3, 2) and int(keep.sum()) == 3


def test_unstructured_mask_is_an_error_naming_the_layer():
    elem = torch.ones(8, 16)
    elem[0, 1] = 0
    with pytest.raises(ValueError, match=r"layer 'fc'.*not block-structured for block 1x4"):
        sqfx.prepare_and_convert(Net(), sqfx.SparseQuantConfig(layout="sparse", masks={"fc": elem}))


def test_unstructured_mask_coarsened_with_warning():
    net = Net()
    elem = torch.ones(8, 16)
    elem[0, 1] = 0           # partly kept block: stored, with weight [0,1] zero
    elem[1, 4:8] = 0         # whole block dropped
    with pytest.warns(UserWarning, match=r"layer 'fc'.*coarsened"):
        out = sqfx.prepare_and_convert(net, sqfx.SparseQuantConfig(layout="sparse", masks={"fc": elem},
                                                                   on_unstructured_mask="coarsen"))
    bm = stored_block_mask(out)
    assert bool(bm[0, 0]) and not bool(bm[1, 1]) and int(bm.sum()) == 31
    deq = packed_layer(out, "fc").unpack()
    assert deq[0, 1] == 0 and bool((deq[1, 4:8] == 0).all())


def test_wrong_mask_shape():
    with pytest.raises(ValueError, match="layer 'fc'.*shape"):
        sqfx.prepare_and_convert(Net(), sqfx.SparseQuantConfig(layout="sparse", masks={"fc": torch.ones(3, 3)}))


def test_collect_module_masks_names_layers():
    net = nn.Sequential(Net(), Net())
    prune.random_unstructured(net[1].fc, "weight", amount=0.5)
    found = collect_module_masks(net)
    assert list(found) == ["1.fc"] and found["1.fc"][1] == SOURCE_PRUNE


def test_choose_mask_zeroes_pruned_weights():
    w = torch.randn(4, 8)
    bm = torch.tensor([[True, False]] * 4)
    chosen = choose_mask("x", w, (1, 4), None, "l1", {"x": bm}, {}, "error")
    assert bool((chosen.weight[:, 4:] == 0).all()) and torch.equal(chosen.weight[:, :4], w[:, :4])
