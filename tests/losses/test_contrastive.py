"""The pixel loss against slow references written as loops straight from the equations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixcon.losses.contrastive import (
    default_block_size,
    pixel_contrastive_loss,
    pixel_contrastive_loss_dense,
)


def _in_scope(variant: str, img: np.ndarray, i: int, j: int, kind: str) -> bool:
    if variant == "batch":
        return True
    if variant == "within":
        return bool(img[i] == img[j])
    # cross: positives from the anchor's image and its partner (2k <-> 2k+1), negatives from its own image.
    return bool(img[i] // 2 == img[j] // 2) if kind == "pos" else bool(img[i] == img[j])


def reference_loss(
    z: np.ndarray, labels: np.ndarray, tau: float, form: str, variant: str, img: np.ndarray, ignore: int = 255
) -> float:
    """Zhao et al. Eq. 1 / Khosla et al. L_out as explicit loops, float64."""
    keep = labels != ignore
    z, labels, img = z[keep], labels[keep], img[keep]
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    per_anchor = []
    for i in range(len(z)):
        others = [j for j in range(len(z)) if j != i]
        pos = [j for j in others if labels[j] == labels[i] and _in_scope(variant, img, i, j, "pos")]
        neg = [j for j in others if labels[j] != labels[i] and _in_scope(variant, img, i, j, "neg")]
        if not pos:
            continue
        a = {j: float(z[i] @ z[j]) / tau for j in pos + neg}
        terms = []
        for p in pos:
            if form == "zhao":
                denom = math.exp(a[p]) + sum(math.exp(a[n]) for n in neg)
            else:
                denom = sum(math.exp(a[k]) for k in pos + neg)
            terms.append(math.log(math.exp(a[p]) / denom))
        per_anchor.append(-sum(terms) / len(pos))
    return float(np.mean(per_anchor)) if per_anchor else 0.0


def _data(n: int, d: int, num_classes: int, num_images: int, ignore_frac: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    labels = torch.randint(num_classes, (n,), generator=g)
    labels[torch.rand(n, generator=g, dtype=torch.float64) < ignore_frac] = 255
    img = torch.randint(num_images, (n,), generator=g)
    return z, labels, img


def _numeric_grad(z, labels, img, tau, form, variant) -> np.ndarray:
    zn, ln, im = z.numpy(), labels.numpy(), img.numpy()
    eps, grad = 1e-6, np.zeros_like(zn)
    for idx in np.ndindex(*zn.shape):
        zp, zm = zn.copy(), zn.copy()
        zp[idx] += eps
        zm[idx] -= eps
        grad[idx] = (
            reference_loss(zp, ln, tau, form, variant, im) - reference_loss(zm, ln, tau, form, variant, im)
        ) / (2 * eps)
    return grad


GRID = [
    # n, d, classes, images, ignored fraction
    (2, 3, 1, 1, 0.0),
    (9, 4, 3, 2, 0.0),
    (17, 8, 4, 3, 0.2),
    (33, 5, 7, 4, 0.1),
]


@pytest.mark.parametrize("n, d, num_classes, num_images, ignore_frac", GRID)
@pytest.mark.parametrize("tau", [0.07, 0.5, 2.0])
@pytest.mark.parametrize("form", ["zhao", "supcon"])
@pytest.mark.parametrize("variant", ["batch", "within", "cross"])
def test_value_matches_reference(n, d, num_classes, num_images, ignore_frac, tau, form, variant) -> None:
    z, labels, img = _data(n, d, num_classes, num_images, ignore_frac, seed=n * 7 + d)
    expected = reference_loss(z.numpy(), labels.numpy(), tau, form, variant, img.numpy())
    kwargs = dict(temperature=tau, form=form, image_ids=img, variant=variant)
    for block in (1, 5, None):
        got = pixel_contrastive_loss(z, labels, block_size=block, **kwargs)
        assert got.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert pixel_contrastive_loss_dense(z, labels, **kwargs).item() == pytest.approx(
        expected, rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("n, d, num_classes, num_images, ignore_frac", GRID[1:3])
@pytest.mark.parametrize("tau", [0.1, 1.0])
@pytest.mark.parametrize("form", ["zhao", "supcon"])
@pytest.mark.parametrize("variant", ["batch", "within", "cross"])
def test_gradient_matches_reference(n, d, num_classes, num_images, ignore_frac, tau, form, variant) -> None:
    z, labels, img = _data(n, d, num_classes, num_images, ignore_frac, seed=3 * n + d)
    z.requires_grad_(True)
    pixel_contrastive_loss(z, labels, tau, form, image_ids=img, variant=variant, block_size=4).backward()
    expected = _numeric_grad(z.detach(), labels, img, tau, form, variant)
    np.testing.assert_allclose(z.grad.numpy(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", ["zhao", "supcon"])
@pytest.mark.parametrize("variant", ["batch", "within", "cross"])
def test_gradcheck_and_dense_agree(form: str, variant: str) -> None:
    z, labels, img = _data(40, 6, 4, 4, 0.1, seed=11)
    z.requires_grad_(True)

    def blocked(x: torch.Tensor) -> torch.Tensor:
        return pixel_contrastive_loss(x, labels, 0.3, form, image_ids=img, variant=variant, block_size=7)

    assert torch.autograd.gradcheck(blocked, (z,), eps=1e-6, atol=1e-6)
    (g_blocked,) = torch.autograd.grad(blocked(z), z)
    dense = pixel_contrastive_loss_dense(z, labels, 0.3, form, image_ids=img, variant=variant)
    (g_dense,) = torch.autograd.grad(dense, z)
    torch.testing.assert_close(g_blocked, g_dense, rtol=1e-9, atol=1e-12)


def test_float32_large_n_matches_dense() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3000, 32, generator=g, requires_grad=True)
    labels = torch.randint(5, (3000,), generator=g)
    for form in ("zhao", "supcon"):
        a = pixel_contrastive_loss(z, labels, 0.07, form, block_size=256)
        b = pixel_contrastive_loss_dense(z, labels, 0.07, form)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            torch.autograd.grad(a, z)[0], torch.autograd.grad(b, z)[0], rtol=1e-4, atol=1e-7
        )


def test_identical_embeddings_give_analytic_value() -> None:
    # All cosines are 1: zhao gives log(1 + |N|) for every anchor, supcon log(N - 1).
    z = torch.ones(10, 4, dtype=torch.float64)
    labels = torch.tensor([0] * 4 + [1] * 6)
    zhao = pixel_contrastive_loss(z, labels, 0.1, "zhao")
    expected = (4 * math.log(1 + 6) + 6 * math.log(1 + 4)) / 10
    assert zhao.item() == pytest.approx(expected, rel=1e-12)
    assert pixel_contrastive_loss(z, labels, 0.1, "supcon").item() == pytest.approx(math.log(9), rel=1e-12)


@pytest.mark.parametrize("form", ["zhao", "supcon"])
@pytest.mark.parametrize(
    "labels",
    [
        [0],  # N < 2
        [],  # empty
        [255, 255, 255],  # everything ignored
        [0, 1, 2, 3],  # no anchor has a positive
        [4, 4, 4, 4, 4],  # a single class: no negatives
        [0, 0, 1, 2, 255],  # some anchors without positives
    ],
)
def test_degenerate_batches_are_finite_and_keep_the_graph(form: str, labels: list[int]) -> None:
    y = torch.tensor(labels, dtype=torch.long)
    z = torch.randn(len(labels), 8, requires_grad=True)
    for variant in ("batch", "within", "cross"):
        loss = pixel_contrastive_loss(z, y, 0.1, form, image_ids=torch.zeros_like(y), variant=variant)
        assert torch.isfinite(loss)
        loss.backward()
        assert z.grad is not None and torch.isfinite(z.grad).all()
        z.grad = None


def test_single_class_zhao_is_exactly_zero() -> None:
    z = torch.randn(12, 8, requires_grad=True)
    loss = pixel_contrastive_loss(z, torch.full((12,), 3), 0.1, "zhao")
    assert loss.item() == 0.0 and loss.requires_grad


def test_within_image_ignores_other_images() -> None:
    # The within-image loss of a batch is the anchor-weighted mean of the per-image losses.
    z, labels, _ = _data(20, 4, 2, 1, 0.0, seed=5)
    img = torch.tensor([0] * 10 + [1] * 10)
    base = pixel_contrastive_loss(z[:10], labels[:10], 0.1, variant="within", image_ids=img[:10])
    both = pixel_contrastive_loss(z, labels, 0.1, variant="within", image_ids=img)
    other = pixel_contrastive_loss(z[10:], labels[10:], 0.1, variant="within", image_ids=img[10:])
    n0 = int((torch.bincount(labels[:10])[labels[:10]] > 1).sum())
    n1 = int((torch.bincount(labels[10:])[labels[10:]] > 1).sum())
    assert both.item() == pytest.approx((base.item() * n0 + other.item() * n1) / (n0 + n1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=0.0), "temperature"),
        (dict(form="nope"), "form"),
        (dict(variant="nope"), "variant"),
        (dict(variant="within"), "image_ids"),
        (dict(block_size=0), "block_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pixel_contrastive_loss(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), **kwargs)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        pixel_contrastive_loss(torch.randn(6), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must have shape"):
        pixel_contrastive_loss(torch.randn(6, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        pixel_contrastive_loss(torch.randn(6, 3), torch.zeros(6))


def test_default_block_size_bounds() -> None:
    assert default_block_size(10) == 10
    assert 32 <= default_block_size(16384) <= 16384
    assert default_block_size(16384) * 16384 <= (1 << 22)


def test_half_precision_inputs_compute_in_float32() -> None:
    z = torch.randn(64, 16).bfloat16().requires_grad_(True)
    labels = torch.randint(3, (64,))
    loss = pixel_contrastive_loss(z, labels, 0.1)
    assert loss.dtype == torch.float32
    loss.backward()
    assert z.grad.dtype == torch.bfloat16
    ref = pixel_contrastive_loss_dense(z.detach().float(), labels, 0.1)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-5)
