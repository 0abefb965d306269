"""Trainee: objectives see float32 network outputs and compute their losses with autocast off."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from pixcon.data.unlabeled import HiddenMasks
from pixcon.models import create_segmenter
from pixcon.objectives import Objective
from pixcon.train.trainee import Trainee


class _Probe(Objective):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, object] = {}

    def forward(self, model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
        logits = model(batch)
        encoded, decoded = model.features(batch)
        a = torch.randn(4, 4)
        self.seen = {
            "logits": logits.dtype,
            "decoded": decoded.dtype,
            "encoded": {e.dtype for e in encoded},
            "matmul": (a @ a).dtype,  # autocast would make this bf16
            "stride": model.stride,  # plain attributes pass through
        }
        return {"sum": logits.sum()}


def _bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_mixed_precision_outputs_are_float32_and_losses_run_without_autocast() -> None:
    model = create_segmenter(num_classes=3)
    probe = _Probe()
    trainee = Trainee(model, probe, autocast=_bf16)
    x = torch.rand(2, 3, 64, 64)
    with _bf16():  # what Fabric's precision wraps around forward
        trainee(x)
    assert probe.seen == {
        "logits": torch.float32,
        "decoded": torch.float32,
        "encoded": {torch.float32},
        "matmul": torch.float32,
        "stride": model.stride,
    }


def test_network_itself_still_runs_in_bf16() -> None:
    model = create_segmenter(num_classes=3)
    dtypes = []
    model.net.decoder.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with _bf16():
        Trainee(model, _Probe(), autocast=_bf16)(torch.rand(2, 3, 64, 64))
    assert torch.bfloat16 in dtypes  # mixed precision is not silently turned off


def test_hidden_masks_are_all_ignore() -> None:
    class Data:
        ids: ClassVar[list[str]] = ["a", "b"]
        ignore_index = 255

        def __len__(self) -> int:
            return 2

        def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
            return torch.zeros(3, 4, 4), torch.full((4, 4), i, dtype=torch.long)

        def mask(self, i: int) -> Tensor:
            return self[i][1]

    view = HiddenMasks(Data(), hidden=["b"])
    assert view[0][1].eq(0).all() and view[1][1].eq(255).all()
    assert view.mask(1).eq(255).all() and view.mask(0).eq(0).all()
    assert view.ids == ["a", "b"] and len(view) == 2
