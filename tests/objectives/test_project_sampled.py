"""loss.project_sampled: the projection head on the sampled pixels only, for the contrast objective."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pixcon.config import load_config
from pixcon.losses.dense import PixelContrastiveLoss
from pixcon.models.segmenter import create_segmenter
from pixcon.objectives import DataInfo, create_objective
from pixcon.objectives.supervised import PixelContrast


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 64, 64, generator=g)
    masks = torch.randint(0, 4, (2, 8, 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    masks[:, :4] = 255  # some ignored pixels
    return images, masks


def _loss_and_grads(model: torch.nn.Module, objective: PixelContrast) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    torch.manual_seed(0)  # the class-balanced sampler draws from the global RNG
    loss = objective(model, _batch())["contrast"]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("budget", [64, 100_000])  # a sample, and every pixel
def test_sampled_projection_equals_project_then_sample_without_batch_norm(budget: int) -> None:
    """With a 1-layer head (a linear 1x1 map, no BN) projecting the sampled pixels is the same
    function as projecting every pixel and then sampling: same loss, same gradients."""
    torch.manual_seed(1)
    model = create_segmenter(num_classes=4, proj_dim=16, proj_layers=1).train()
    loss = PixelContrastiveLoss(0.1, max_pixels=budget)
    full_loss, full_grads = _loss_and_grads(model, PixelContrast(loss))
    sampled_loss, sampled_grads = _loss_and_grads(model, PixelContrast(loss, project_sampled=True))
    torch.testing.assert_close(sampled_loss, full_loss, rtol=1e-5, atol=1e-6)
    assert full_grads.keys() == sampled_grads.keys() and "projection.net.0.weight" in str(full_grads.keys())
    for name, grad in full_grads.items():  # float32 summation order: ~1e-6 of each tensor's scale
        assert (sampled_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max(), name


def test_sampled_projection_with_batch_norm_uses_the_sampled_statistics() -> None:
    """With BN in the head the two differ (statistics of the sample, not of the map), the head still
    trains, and its running statistics come from the sampled pixels only."""
    torch.manual_seed(1)
    model = create_segmenter(num_classes=4, proj_dim=16, proj_layers=2).train()
    objective = PixelContrast(PixelContrastiveLoss(0.1, max_pixels=64), project_sampled=True)
    loss, grads = _loss_and_grads(model, objective)
    assert torch.isfinite(loss) and any(n.startswith("projection.") for n in grads)
    bn = next(m for m in model.projection.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # Recompute the sample and check the BN saw exactly those rows.
    torch.manual_seed(0)
    images, masks = _batch()
    rows, _, _ = objective.loss.sample(model.decoder_cells(images), masks)  # (M, C_dec)
    first = model.projection.net[0](rows[:, :, None, None])  # (M, hidden, 1, 1)
    expected = 0.9 * torch.zeros_like(bn.running_mean) + 0.1 * first.mean((0, 2, 3))
    torch.testing.assert_close(bn.running_mean, expected.detach(), rtol=1e-4, atol=1e-6)


def test_config_key_reaches_the_objective() -> None:
    cfg = load_config(overrides=["loss.project_sampled=true"])
    info = DataInfo(num_classes=4, ignore_index=255, in_channels=3)
    model = create_segmenter(num_classes=4, proj_dim=16)
    assert create_objective("contrast", cfg, model, info).project_sampled
    off = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, project_sampled=False))
    assert not create_objective("contrast", off, model, info).project_sampled
