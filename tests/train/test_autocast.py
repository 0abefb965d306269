"""Autocast reaches every forward path by construction: a method added to the segmenter for this test
runs in half precision through the trainee, without any list of method names being edited."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pixcon.models import Segmenter, create_segmenter
from pixcon.objectives import Objective
from pixcon.train.trainee import Trainee


class _WithNewPath(Segmenter):
    """A segmenter with a forward path that no list in the library knows about."""

    def bottleneck_energy(self, x: Tensor) -> tuple[Tensor, torch.dtype, bool]:
        encoded, _ = self.features(x)  # (B, C, h, w) coarsest last
        energy = encoded[-1].pow(2).mean(dim=(1, 2, 3))  # (B,)
        return energy, encoded[-1].dtype, torch.is_autocast_enabled("cpu")


class _UsesNewPath(Objective):
    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, object] = {}

    def forward(self, model: nn.Module, batch: Tensor) -> dict[str, Tensor]:
        energy, inner_dtype, autocast_on = model.bottleneck_energy(batch)
        self.seen = {"inner": inner_dtype, "autocast": autocast_on, "returned": energy.dtype}
        return {"energy": energy.mean()}


def _bf16() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_a_new_method_runs_under_bf16_autocast_and_returns_float32() -> None:
    torch.manual_seed(0)
    reference = create_segmenter(num_classes=3, proj_dim=8)
    model = _WithNewPath(num_classes=3, proj_dim=8)
    model.load_state_dict(reference.state_dict())
    probe = _UsesNewPath()
    with _bf16():  # what Fabric's precision wraps around the trainee's forward
        terms = Trainee(model, probe, autocast=_bf16)(torch.rand(2, 3, 64, 64))
    assert probe.seen == {"inner": torch.bfloat16, "autocast": True, "returned": torch.float32}
    assert terms["energy"].dtype == torch.float32 and torch.isfinite(terms["energy"])


def test_without_mixed_precision_the_method_runs_in_float32() -> None:
    model = _WithNewPath(num_classes=3, proj_dim=8)
    probe = _UsesNewPath()
    Trainee(model, probe)(torch.rand(2, 3, 64, 64))
    assert probe.seen == {"inner": torch.float32, "autocast": False, "returned": torch.float32}


def test_module_machinery_is_not_wrapped() -> None:
    """nn.Module's own methods (parameters, state_dict, ...) are the segmenter's, unwrapped."""
    from pixcon.train.trainee import MixedPrecisionModel

    model = create_segmenter(num_classes=3, proj_dim=8)
    view = MixedPrecisionModel(model, _bf16)
    assert next(view.parameters()) is next(model.parameters())
    assert view.state_dict().keys() == model.state_dict().keys()
    assert view.projection is model.projection and view.stride == model.stride
