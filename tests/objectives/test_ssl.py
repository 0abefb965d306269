"""The two-view objectives on a tiny segmenter: finite terms, gradients where they belong, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import default_collate

from pixcon.config import RunConfig, replace
from pixcon.data.views import TwoViews
from pixcon.models.segmenter import create_segmenter
from pixcon.objectives import ssl
from pixcon.objectives.base import OBJECTIVES, DataInfo, create_objective

INFO = DataInfo(num_classes=3, ignore_index=255, in_channels=3)
NAMES = ["glcnet", "dense_simclr", "directclr"]


class _Blobs:
    """Images of coloured rectangles (something to learn), no transform, like an unlabeled split."""

    transform = None
    num_classes, ignore_index, in_channels = 3, 255, 3

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(index)
        image = torch.rand(3, 1, 1, generator=g).expand(3, 80, 96).clone()
        for _ in range(3):
            y, x = torch.randint(50, (2,), generator=g).tolist()
            image[:, y : y + 30, x : x + 40] = torch.rand(3, 1, 1, generator=g)
        return image, torch.full((80, 96), 255)


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    views = TwoViews(_Blobs(), size=64, seed=0)
    return default_collate([views[i] for i in range(2)])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_segmenter(num_classes=3, encoder="resnet18")


def _total(objective: nn.Module, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(1)  # the same patches / pixel pairs at every call
    terms = objective(model, batch)
    assert terms and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    return sum(terms.values())  # type: ignore[return-value]


def _grad(p: nn.Parameter) -> float:
    return 0.0 if p.grad is None else float(p.grad.abs().sum())


@pytest.mark.parametrize("name", NAMES)
def test_objective_learns_and_sends_gradients_where_it_should(name: str, batch: dict) -> None:
    model = _model()
    objective = create_objective(name, RunConfig(), model, INFO)
    assert objective.views == 2 and objective.images == "all" and not objective.uses_segmentation_head
    assert objective.uses_projection_head == (name == "dense_simclr")
    expected_terms = {"glcnet": {"global", "local"}, "dense_simclr": {"infonce"}, "directclr": {"directclr"}}
    torch.manual_seed(1)
    assert set(objective(model, batch)) == expected_terms[name]

    loss = _total(objective, model, batch)
    loss.backward()
    assert _grad(model.net.encoder.conv1.weight) > 0  # reaches the encoder's first layer
    assert any(_grad(p) > 0 for p in model.net.decoder.parameters())
    assert all(_grad(p) == 0 for p in model.net.segmentation_head.parameters())
    projection_used = any(_grad(p) > 0 for p in model.projection.parameters())
    assert projection_used == objective.uses_projection_head
    own = list(objective.parameters())
    assert (len(own) > 0) == (name == "glcnet")
    assert all(_grad(p) > 0 for p in own)  # both GLCNet MLPs, every layer

    params = [p for p in model.parameters() if p.requires_grad] + own
    optimizer = torch.optim.Adam(params, lr=1e-3)
    first = float(loss.detach())
    for _ in range(5):
        optimizer.zero_grad()
        loss = _total(objective, model, batch)
        loss.backward()
        optimizer.step()
    last = float(_total(objective, model, batch).detach())
    assert last < first, (first, last)


def test_factories_read_the_ssl_section() -> None:
    model = _model()
    cfg = replace(
        RunConfig(),
        ssl=dict(
            glcnet_patches=2, glcnet_out_dim=16, glcnet_global_weight=0.25, directclr_dim=8, max_pairs=7
        ),
    )
    glc = create_objective("glcnet", cfg, model, INFO)
    assert glc.num_patches == 2 and glc.global_head[-1].out_features == 16
    assert glc.loss.global_weight == 0.25 and glc.loss.nt_xent.temperature == 0.5  # unset: the default
    assert glc.global_head[0].in_features == 2 * 512 and glc.local_head[0].in_features == 256
    direct = create_objective("directclr", cfg, model, INFO)
    assert direct.loss.dim == 8 and direct.loss.max_pairs == 7
    assert create_objective("dense_simclr", cfg, model, INFO).loss.max_pairs == 7
    with pytest.raises(ValueError, match="directclr_dim"):
        create_objective("directclr", replace(RunConfig(), ssl={"directclr_dim": 257}), model, INFO)
    assert {"glcnet", "dense_simclr", "directclr"} <= set(OBJECTIVES)


def test_feature_channels_read_or_measured() -> None:
    model = _model()

    class Bare(nn.Module):  # no smp attributes: the channels are measured with a forward pass
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.in_channels, self.stride = model, 3, model.stride

        def features(self, x: torch.Tensor):
            return self.inner.features(x)

    assert ssl.feature_channels(model) == (512, 256)
    bare = Bare().train()
    assert ssl.feature_channels(bare) == (512, 256) and bare.training


def test_objectives_reject_other_batches(batch: dict) -> None:
    model = _model()
    objective = create_objective("dense_simclr", RunConfig(), model, INFO)
    with pytest.raises(ValueError, match="TwoViews"):
        objective(model, (batch["view1"], batch["mask1"]))


def test_glcnet_without_any_overlap_has_a_zero_local_term(batch: dict) -> None:
    disjoint = dict(batch)
    g2 = batch["geom2"].clone()
    g2[:, 0] = batch["geom1"][:, 0] + batch["geom1"][:, 2] + 1  # view 2 starts below view 1: no overlap
    disjoint["geom2"] = g2
    model = _model()
    objective = create_objective("glcnet", RunConfig(), model, INFO)
    terms = objective(model, disjoint)
    assert terms["local"].item() == 0.0 and terms["global"].item() > 0
    sum(terms.values()).backward()  # the graph reaches the local head (DDP needs every parameter)
    assert all(p.grad is not None for p in objective.local_head.parameters())


@pytest.mark.parametrize("arch", sorted(ssl.MEASURED_CELL_OFFSETS))
def test_measured_cell_offsets_hold_and_warn(arch: str, caplog: pytest.LogCaptureFixture) -> None:
    from cell_geometry import mirrored_cell_offset
    from pixcon.data.views import CELL_OFFSET

    stride, low, high = ssl.MEASURED_CELL_OFFSETS[arch]
    torch.manual_seed(0)
    model = create_segmenter(arch=arch, num_classes=3).eval()
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    measured_stride, measured = mirrored_cell_offset(model, image)
    assert measured_stride == stride
    assert bool(((measured >= low - 0.3) & (measured <= high + 0.3)).all()), measured.tolist()
    assert bool(((measured - CELL_OFFSET).abs() > 1.0).all())  # the reason for the warning
    with caplog.at_level("WARNING", logger="pixcon.objectives.ssl"):
        ssl.warn_cell_geometry(model, "dense_simclr")
    assert f"{arch} cells are centred {low:+.1f} to {high:+.1f} px" in caplog.text


def test_no_cell_warning_for_deeplabv3plus(caplog: pytest.LogCaptureFixture) -> None:
    model = create_segmenter(num_classes=3, proj_dim=8)
    with caplog.at_level("WARNING", logger="pixcon.objectives.ssl"):
        for name in NAMES:
            create_objective(name, RunConfig(), model, INFO)
    assert "cells are centred" not in caplog.text
