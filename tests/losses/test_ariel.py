"""ARIEL: the PGD view, the information regulariser, BatchNorm bookkeeping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixcon.losses.ariel import (
    extra_pass,
    information_regularizer,
    pgd_attack,
    two_view_pixel_loss,
)
from pixcon.losses.contrastive import pixel_contrastive_loss


def _embedder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 6, 1)).double()


def _attack_setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, 8, 8, generator=g, dtype=torch.float64)
    images[0, 0, :2] = 0.0  # pixels on the range's borders: the projection must clamp them
    images[1, 1, -2:] = 1.0
    labels = torch.randint(3, (2 * 64,), generator=g)
    net = _embedder(seed)

    def embed(x: torch.Tensor) -> torch.Tensor:  # (B, 3, 8, 8) -> (B*64, 6)
        return F.normalize(net(x), dim=1).permute(0, 2, 3, 1).reshape(-1, 6)

    with torch.no_grad():
        anchor = embed(images.flip(-1))  # a fixed "view 1"

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return two_view_pixel_loss(anchor, embed(x), labels, temperature=0.3)

    return images, loss_fn, net


@pytest.mark.parametrize(("epsilon", "alpha", "steps"), [(0.03, 0.01, 5), (0.1, 0.04, 3), (0.5, 0.2, 2)])
def test_pgd_stays_in_the_ball_and_range_and_raises_the_loss(
    epsilon: float, alpha: float, steps: int
) -> None:
    images, loss_fn, net = _attack_setup()
    before = [p.detach().clone() for p in net.parameters()]
    result = pgd_attack(loss_fn, images, epsilon, alpha, steps)
    adv = result.images
    assert (adv - images).abs().max() <= epsilon + 1e-12
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert (adv - images).abs().max() > 0.5 * min(epsilon, alpha * steps)  # it did move
    with torch.no_grad():
        clean, attacked = loss_fn(images).item(), loss_fn(adv).item()
    assert result.clean_loss == pytest.approx(clean, rel=1e-12)
    assert result.loss == pytest.approx(attacked, rel=1e-12)
    assert attacked >= clean
    assert attacked > clean + 1e-3  # gradient *ascent*: a wrong sign would return the clean images
    for p, q in zip(net.parameters(), before, strict=True):
        assert p.grad is None and torch.equal(p, q)  # only the input is differentiated


def test_pgd_with_zero_epsilon_returns_the_images() -> None:
    images, loss_fn, _ = _attack_setup(1)
    result = pgd_attack(loss_fn, images, epsilon=0.0, alpha=0.01, steps=5)
    assert torch.equal(result.images, images)
    assert result.loss == result.clean_loss == pytest.approx(loss_fn(images).item(), rel=1e-12)
    with pytest.raises(ValueError, match="epsilon"):
        pgd_attack(loss_fn, images, epsilon=-0.1, alpha=0.01, steps=1)


def _ref_info(z1: torch.Tensor, z2: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean_i max(0, 2 cos(z1_i, z2_i) - cos(z1_i, z_i) - cos(z2_i, z_i)), the last two constant."""
    terms = []
    for i in range(len(z1)):
        s12 = (z1[i] @ z2[i]) / (z1[i].norm() * z2[i].norm())
        s1 = ((z1[i] @ z[i]) / (z1[i].norm() * z[i].norm())).detach()
        s2 = ((z2[i] @ z[i]) / (z2[i].norm() * z[i].norm())).detach()
        value = 2 * s12 - s1 - s2
        terms.append(value if value.item() > 0 else value * 0.0)
    return sum(terms) / len(terms)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_information_regulariser_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(12, 4, generator=g, dtype=torch.float64)
    # some views agree with each other more than with the original (active), some less (inactive)
    z1 = torch.randn(12, 4, generator=g, dtype=torch.float64)
    z2 = z1 + 0.3 * torch.randn(12, 4, generator=g, dtype=torch.float64)
    z2[:4] = -z1[:4]
    leaves = [t.clone().requires_grad_(True) for t in (z1, z2, z)]
    refs = [t.clone().requires_grad_(True) for t in (z1, z2, z)]
    got = information_regularizer(*leaves)
    expected = _ref_info(*refs)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    got.backward()
    expected.backward()
    for a, b in zip(leaves[:2], refs[:2], strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    assert leaves[2].grad is None  # the original's similarities are constants: no gradient reaches it
    assert got.item() > 0 and (leaves[0].grad[:4] == 0).all()  # inactive rows get no gradient


def test_information_regulariser_is_zero_when_views_agree_with_the_original() -> None:
    z = F.normalize(torch.randn(5, 3, dtype=torch.float64), dim=1)
    assert information_regularizer(z, z.clone(), z.clone()).item() == 0.0
    assert information_regularizer(z[:0], z[:0], z[:0]).item() == 0.0


def test_two_view_loss_is_the_pixel_loss_of_both_views() -> None:
    g = torch.Generator().manual_seed(3)
    za, zb = torch.randn(2, 10, 4, generator=g, dtype=torch.float64)
    labels = torch.randint(3, (10,), generator=g)
    expected = pixel_contrastive_loss(torch.cat([za, zb]), torch.cat([labels, labels]), 0.2)
    assert two_view_pixel_loss(za, zb, labels, 0.2).item() == pytest.approx(expected.item(), rel=1e-12)
    # each pixel's other view is a positive even when it is alone in its class
    unique = torch.arange(10)
    assert two_view_pixel_loss(za, zb, unique, 0.2).item() > 0


def test_extra_pass_restores_running_statistics_and_switches_dropout_off() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)).train()
    saved = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    x = torch.randn(2, 3, 6, 6)
    with extra_pass(net):
        out, again = net(x), net(x)
        assert not net[2].training and net[1].training
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # no dropout: a deterministic function
    # train-mode BatchNorm inside: normalised with the batch's own statistics
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    for k, v in saved.items():
        assert torch.equal(net.state_dict()[k], v), k
    assert net[2].training
    net(x)
    assert not torch.equal(net.state_dict()["1.running_mean"], saved["1.running_mean"])  # outside it updates
