"""Tampering with .pt2 archives (torch.export.save's zip layout) for the hardening tests.

An archive is a zip whose records sit under one root folder: `<root>/models/model.json` (the
graph), `<root>/data/weights/model_weights_config.json` (one entry per state_dict tensor:
record name, `use_pickle`, and `tensor_meta` with dtype, sizes, strides, storage_offset,
device, requires_grad), the raw records `<root>/data/weights/weight_<i>`, the same for
constants, `<root>/data/sample_inputs/model.pt` and `<root>/extra/*`.
"""
from __future__ import annotations

import json
import zipfile

import torch
from torch import nn

import sqfx

WEIGHTS_CONFIG = "data/weights/model_weights_config.json"


class Archive:
    """The records of a .pt2 in memory; edit them, then write() a new archive."""

    def __init__(self, path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            self.root = names[0].split("/")[0]
            self.records = {n[len(self.root) + 1:]: z.read(n) for n in names}

    def config(self) -> dict:
        return json.loads(self.records[WEIGHTS_CONFIG])["config"]

    def set_config(self, config: dict) -> None:
        self.records[WEIGHTS_CONFIG] = json.dumps({"config": config}).encode()

    def edit_meta(self, fqn: str, edit) -> None:
        """edit(entry) changes the weights-config entry of the state_dict tensor `fqn` in place."""
        config = self.config()
        edit(config[fqn])
        self.set_config(config)

    def record_of(self, fqn: str) -> str:
        return "data/weights/" + self.config()[fqn]["path_name"]

    def write(self, path) -> None:
        # 64-byte aligned data, as torch's writer does (its reader maps records in place).
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for name, data in self.records.items():
                info = zipfile.ZipInfo(f"{self.root}/{name}")
                header = 30 + len(info.filename.encode())
                pad = (-(z.fp.tell() + header + 4)) % 64
                info.extra = b"\xfe\xca" + (pad).to_bytes(2, "little") + b"\0" * pad
                z.writestr(info, data)


def exported_mlp(tmp_path, activation="dynamic_int8", name="ok.pt2"):
    """A two-layer sqfx model exported and saved; returns (path, model input, expected output)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 8)).eval()  # GELU: no exact zeros
    x = torch.randn(3, 16)
    ep = sqfx.export(model, (x,), {"activation": activation, "target_sparsity": 0.5, "layout": "sparse"})
    path = tmp_path / name
    sqfx.save(ep, path)
    return path, x, ep.module()(x)


def layer_fqns(archive: Archive, tensor: str) -> list[str]:
    """The state_dict names of one packed tensor ("values", "col_idx", ...) of every layer."""
    return sorted(k for k in archive.config() if is_packed_tensor_name(k, tensor))


def is_packed_tensor_name(name: str, tensor: str) -> bool:
    """Whether a state_dict name is the packed tensor `tensor` of some layer ("sqfx_0.values")."""
    return name.endswith("." + tensor) or name.endswith("_" + tensor)
