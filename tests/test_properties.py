"""Property tests (hypothesis): invariances of the pixel loss, split nesting, joint-transform alignment."""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixcon.data.splits import nested_label_splits, num_labeled
from pixcon.data.transforms import train_transform
from pixcon.losses.contrastive import pixel_contrastive_loss

IGNORE = 255
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pixel_batches(draw: st.DrawFn) -> dict:
    n = draw(st.integers(2, 40))
    num_classes = draw(st.integers(1, 5))
    labels = draw(st.lists(st.sampled_from([*range(num_classes), IGNORE]), min_size=n, max_size=n))
    image_ids = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    seed = draw(st.integers(0, 2**31 - 1))
    z = torch.randn(
        n, draw(st.integers(1, 6)), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    return {
        "z": z,
        "labels": torch.tensor(labels),
        "image_ids": torch.tensor(image_ids),
        "num_classes": num_classes,
        "form": draw(st.sampled_from(["zhao", "supcon"])),
        "variant": draw(st.sampled_from(["batch", "within", "cross"])),
        "temperature": draw(st.floats(0.05, 1.0)),
        "block_size": draw(st.integers(1, 16)),
        "seed": seed,
    }


def _loss(b: dict, z: torch.Tensor | None = None, labels=None, image_ids=None) -> torch.Tensor:
    return pixel_contrastive_loss(
        b["z"] if z is None else z,
        b["labels"] if labels is None else labels,
        b["temperature"],
        b["form"],
        IGNORE,
        image_ids=b["image_ids"] if image_ids is None else image_ids,
        variant=b["variant"],
        block_size=b["block_size"],
    )


@FAST
@given(pixel_batches())
def test_loss_invariant_to_pixel_order(b: dict) -> None:
    perm = torch.randperm(len(b["labels"]), generator=torch.Generator().manual_seed(b["seed"]))
    expected = _loss(b)
    got = _loss(b, z=b["z"][perm], labels=b["labels"][perm], image_ids=b["image_ids"][perm])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@FAST
@given(pixel_batches(), st.data())
def test_loss_invariant_to_label_renaming(b: dict, data: st.DataObject) -> None:
    new_names = data.draw(st.permutations(list(range(10, 10 + b["num_classes"]))))
    mapping = torch.tensor(new_names)
    labels = b["labels"]
    renamed = torch.where(labels == IGNORE, IGNORE, mapping[labels.clamp(max=b["num_classes"] - 1)])
    torch.testing.assert_close(_loss(b, labels=renamed), _loss(b), rtol=1e-10, atol=1e-12)


@FAST
@given(pixel_batches(), st.floats(1e-3, 1e3))
def test_loss_invariant_to_embedding_scale(b: dict, scale: float) -> None:
    torch.testing.assert_close(_loss(b, z=b["z"] * scale), _loss(b), rtol=1e-9, atol=1e-12)


@FAST
@given(pixel_batches())
def test_loss_and_gradient_finite_for_any_labels(b: dict) -> None:
    z = b["z"].clone().requires_grad_(True)
    loss = _loss(b, z=z)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) >= 0
    assert torch.isfinite(z.grad).all()


@FAST
@given(
    st.integers(1, 300),
    st.lists(st.floats(0.001, 1.0), min_size=1, max_size=5),
    st.integers(0, 2**32 - 1),
)
def test_splits_nested_and_deterministic(n: int, fractions: list[float], seed: int) -> None:
    ids = [f"img_{i:04d}" for i in range(n)]
    splits = nested_label_splits(ids, fractions, seed)
    assert splits == nested_label_splits(list(reversed(ids)), fractions, seed)  # input order is irrelevant
    ordered = sorted(set(fractions))
    for small, large in itertools.pairwise(ordered):
        assert set(splits[small]) <= set(splits[large])
    for f in fractions:
        assert len(splits[f]) == num_labeled(f, n) >= 1
        assert len(set(splits[f])) == len(splits[f])


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.integers(12, 48),
    st.integers(12, 48),
    st.sampled_from([16, 32, 40]),
    st.floats(0.1, 1.0),
)
def test_transform_keeps_image_and_mask_aligned(seed: int, h: int, w: int, size: int, lo: float) -> None:
    # Classes 0-3 drawn as blocks; the image carries each pixel's class in two binary channels, so the
    # class can be read back from the transformed image wherever both channels are still pure 0 or 1
    # (bilinear/antialias mixes only pixels of one class there, and nearest picks one of them).
    g = torch.Generator().manual_seed(seed)
    block = 4 * -(-max(h, w) // size)  # blocks at least ~4 output pixels wide
    mask = torch.randint(0, 4, (-(-h // block), -(-w // block)), generator=g)
    mask = mask.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]  # (h, w)
    image = torch.stack([(mask & 1).float(), (mask >> 1).float(), torch.zeros(h, w)])  # (3, h, w)
    torch.manual_seed(seed)
    out_image, out_mask = train_transform(size, scale=(lo, 1.0), color_jitter=0.0)(image, mask)
    assert out_image.shape == (3, size, size) and out_mask.shape == (size, size)
    bits = out_image[:2].round()
    pure = ((out_image[:2] - bits).abs() < 1e-4).all(0)  # (size, size)
    decoded = bits[0].long() + 2 * bits[1].long()
    assert torch.equal(decoded[pure], out_mask[pure])
    assert pure.float().mean() > 0.2  # most pixels are away from class borders: the check has teeth
