"""HCSC, CLAWS and ARIEL objectives on a tiny segmenter: finite terms, gradients, learning, knobs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from pixcon.config import RunConfig, replace
from pixcon.losses.claws import CLAWSLoss
from pixcon.models.segmenter import create_segmenter
from pixcon.objectives import extra
from pixcon.objectives.base import OBJECTIVES, DataInfo, create_objective

INFO = DataInfo(num_classes=3, ignore_index=255, in_channels=3)
NAMES = ["hcsc", "claws", "ariel"]
# Small sizes for a 64x64 batch of 2 (a 16x16 projection map: 512 pixels).
CFG = replace(
    RunConfig(),
    hcsc=dict(
        num_prototypes=[12, 4],
        bank_size=128,
        bank_per_step=128,
        refresh_every=1000,
        max_pixels=512,
        kmeans_iters=5,
    ),
    claws=dict(max_pixels=512),
    ariel=dict(steps=2, max_pixels=256),
)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 64x64 images of class-coloured rectangles on a background, with their masks."""
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[0.2, 0.3, 0.4], [0.9, 0.2, 0.1], [0.1, 0.8, 0.3]])
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    for b in range(2):
        for c in (1, 2):
            y, x = torch.randint(32, (2,), generator=g).tolist()
            masks[b, y : y + 24, x : x + 24] = c
    images = (colours[masks].permute(0, 3, 1, 2) + 0.05 * torch.randn(2, 3, 64, 64, generator=g)).clamp(0, 1)
    masks[0, :4] = 255
    return images, masks


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_segmenter(num_classes=3, encoder="resnet18")


def _total(objective: nn.Module, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(1)  # the same views, pixel samples and selections at every call
    terms = objective(model, batch)
    assert terms and all(t.dim() == 0 and torch.isfinite(t) for t in terms.values())
    return sum(terms.values())  # type: ignore[return-value]


def _warm(objective: nn.Module, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    """HCSC: fill the bank so that the prototypes exist (and stay fixed: refresh_every is large)."""
    if isinstance(objective, extra.HCSC):
        _total(objective, model, batch)
        _total(objective, model, batch)
        assert objective.loss.bank.ready


def test_registered_with_the_contract() -> None:
    for name in NAMES:
        assert name in OBJECTIVES
        objective = create_objective(name, RunConfig(), _model(), INFO)  # the sections' defaults
        assert type(objective).name == name
        assert objective.views == 1 and objective.images == "labeled"
        assert objective.uses_projection_head and not objective.uses_segmentation_head


@pytest.mark.parametrize("name", NAMES)
def test_finite_terms_and_gradients_reach_the_encoder(name: str, batch) -> None:
    model = _model()
    objective = create_objective(name, CFG, model, INFO)
    _warm(objective, model, batch)
    terms = objective(model, batch)
    expected = {
        "hcsc": {"instance", "proto"},
        "claws": {"contrast"},
        "ariel": {"contrast", "adversarial", "info"},
    }
    assert set(terms) == expected[name]
    model.zero_grad()
    sum(terms.values()).backward()
    first_conv = model.net.encoder.conv1.weight.grad
    assert first_conv is not None and torch.isfinite(first_conv).all() and first_conv.abs().sum() > 0
    assert all(p.grad is None for p in model.net.segmentation_head.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(name: str, batch) -> None:
    model = _model()
    objective = create_objective(name, CFG, model, INFO)
    _warm(objective, model, batch)
    params = [p for n, p in model.named_parameters() if not n.startswith("net.segmentation_head")]
    opt = torch.optim.Adam(params, lr=1e-3)
    start = _total(objective, model, batch).item()
    for _ in range(5):
        opt.zero_grad()
        _total(objective, model, batch).backward()
        opt.step()
    assert _total(objective, model, batch).item() < start - 0.05


def test_knobs_are_read_from_the_config_section() -> None:
    cfg = replace(
        RunConfig(),
        hcsc=dict(temperature=0.3, num_prototypes=[6, 3], selection="hard", bank_size=64),
        claws=dict(attention="feature_norm", attend_fraction=0.25, background_classes=[0]),
        ariel=dict(epsilon=0.01, steps=3, info_weight=0.0),
    )
    hcsc = create_objective("hcsc", cfg, _model(), INFO)
    assert hcsc.loss.temperature == 0.3 and hcsc.loss.bank.num_prototypes == [6, 3]
    assert hcsc.loss.selection == "hard" and hcsc.loss.bank.capacity == 64
    claws = create_objective("claws", cfg, _model(), INFO)
    assert (claws.attention_source, claws.attend_fraction, claws.background_classes) == (
        "feature_norm",
        0.25,
        (0,),
    )
    ariel = create_objective("ariel", cfg, _model(), INFO)
    assert (ariel.epsilon, ariel.steps, ariel.info_weight, ariel.temperature) == (0.01, 3, 0.0, 0.4)
    # a bad value is refused by the config, and by the loss itself when the config is bypassed
    with pytest.raises(ValueError, match="selection"):
        replace(RunConfig(), hcsc={"selection": "nope"})
    unchecked = dataclasses.replace(RunConfig(), hcsc=dataclasses.replace(RunConfig().hcsc, selection="nope"))
    with pytest.raises(ValueError, match="selection"):
        create_objective("hcsc", unchecked, _model(), INFO)


def test_claws_feature_norm_attention_masks_the_views(batch) -> None:
    model = _model()
    objective = extra.CLAWS(CLAWSLoss(max_pixels=512), attention="feature_norm", attend_fraction=0.25)
    images, masks = batch
    stats = model.net.encoder.bn1.running_mean.clone()
    attend = objective.attention(model, images, masks)
    assert attend.shape == (2, 64, 64)
    assert attend.float().mean().item() == pytest.approx(0.25)
    assert torch.equal(model.net.encoder.bn1.running_mean, stats)  # the attention pass leaves BN alone
    assert torch.isfinite(_total(objective, model, batch))


def test_ariel_with_zero_epsilon_is_the_plain_loss(batch) -> None:
    # No attack and identical views: the "adversarial" view is the image itself, so its term is
    # the plain two-view loss, and the views agree with the original exactly (regulariser 0).
    # (Evaluation mode: DeepLabV3+'s dropout would make the copies of one image differ.)
    model = _model().eval()
    objective = extra.ARIEL(epsilon=0.0, jitter=0.0, max_pixels=256, adv_weight=1.0, info_weight=1.0)
    terms = objective(model, batch)
    assert terms["adversarial"].item() == pytest.approx(terms["contrast"].item(), rel=1e-6)
    assert terms["info"].item() == pytest.approx(0.0, abs=1e-5)


def test_ariel_attack_leaves_parameters_and_bn_statistics_alone(batch) -> None:
    model = _model()
    objective = extra.ARIEL(steps=2, max_pixels=128, adv_weight=1.0, info_weight=0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        objective(model, batch)  # the attack still differentiates the input under no_grad
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # only the final joint forward moves BN running statistics (once per BN layer)
    assert all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    assert (
        int(after["net.encoder.bn1.num_batches_tracked"])
        == int(before["net.encoder.bn1.num_batches_tracked"]) + 1
    )
