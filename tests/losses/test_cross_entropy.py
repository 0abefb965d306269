"""The cross-entropy helper: F.cross_entropy bit for bit on labeled batches, zero with the graph kept
on batches without a labeled pixel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pixcon.losses.cross_entropy import cross_entropy


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignored_share", [0.0, 0.5, 0.99])
def test_equals_f_cross_entropy_on_labeled_batches(weighted: bool, ignored_share: float) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(4, (2, 8, 8), generator=g)
    target[torch.rand(2, 8, 8, generator=g) < ignored_share] = 255
    target[0, 0, 0] = 1  # at least one labeled pixel
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0]) if weighted else None
    got = cross_entropy(logits, target, weight=weight, ignore_index=255)
    expected = F.cross_entropy(logits, target, weight=weight, ignore_index=255)
    assert torch.equal(got, expected)  # bit for bit: valid runs do not change
    (g1,) = torch.autograd.grad(got, logits)
    (g2,) = torch.autograd.grad(expected, logits)
    assert torch.equal(g1, g2)


def test_matches_a_loop_over_the_labeled_pixels() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    target = torch.randint(3, (1, 4, 4), generator=g)
    target[0, :2] = 7  # ignore_index 7
    weight = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    num = den = 0.0
    for y in range(4):
        for x in range(4):
            c = int(target[0, y, x])
            if c == 7:
                continue
            log_p = logits[0, :, y, x].log_softmax(0)[c].item()
            num += -weight[c].item() * log_p
            den += weight[c].item()
    got = cross_entropy(logits, target, weight=weight, ignore_index=7)
    assert got.item() == pytest.approx(num / den, rel=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_no_labeled_pixel_gives_zero_with_the_graph_kept(weighted: bool) -> None:
    logits = torch.randn(2, 3, 5, 5, requires_grad=True)
    target = torch.full((2, 5, 5), 255)
    weight = torch.ones(3) if weighted else None
    assert F.cross_entropy(logits, target, weight=weight, ignore_index=255).isnan()  # what it replaces
    loss = cross_entropy(logits, target, weight=weight, ignore_index=255)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))


def test_labeled_pixels_of_zero_weight_only_give_zero() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    target = torch.tensor([[[2, 255], [2, 255]]])
    weight = torch.tensor([1.0, 1.0, 0.0])  # "balanced" weights give absent classes 0
    assert F.cross_entropy(logits, target, weight=weight, ignore_index=255).isnan()
    loss = cross_entropy(logits, target, weight=weight, ignore_index=255)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
