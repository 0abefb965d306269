"""The prototype-initialised segmentation head against nearest-class-mean classifiers written out
directly (cosine over the contrastive embedding, Euclidean over the features)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from pixcon.models import create_segmenter
from pixcon.models.prototype_head import ABSENT_MARGIN, fit_scale, load_head, prototype_head

K = 4


def _batches(seed: int = 0, n: int = 3, size: int = 32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.rand(2, 3, size, size, generator=g)
        masks = torch.randint(0, K - 1, (2, size, size), generator=g)  # class K-1 never labeled
        masks[:, :3] = 255  # some ignored pixels
        out.append((images, masks))
    return out


def _features(model, batches):
    """Every labeled pixel's head input u (N, C), label (N,), by the model's own pieces."""
    us, ys = [], []
    with torch.no_grad():
        for images, masks in batches:
            u = (
                model.head_inputs(images)
                .permute(0, 2, 3, 1)
                .reshape(-1, model.net.segmentation_head[0].in_channels)
            )
            y = masks.reshape(-1)
            us.append(u[y != 255].double())
            ys.append(y[y != 255])
    return torch.cat(us), torch.cat(ys)


def _model(proj_layers: int, arch: str = "deeplabv3plus"):
    torch.manual_seed(0)
    model = create_segmenter(
        arch=arch, encoder="resnet18", num_classes=K, proj_layers=proj_layers, proj_dim=16
    )
    # a few train-mode passes so that BN running statistics are not the identity
    with torch.no_grad():
        for images, _ in _batches(seed=5):
            model(images)
    return model.eval()


@pytest.mark.parametrize("arch", ["deeplabv3plus", "deeplabv3", "fpn", "unet"])
def test_head_inputs_through_the_head_conv_are_the_forward_logits(arch: str) -> None:
    model = _model(2, arch)
    x = torch.rand(2, 3, 64, 32)
    conv = model.net.segmentation_head[0]
    with torch.no_grad():
        via = F.conv2d(model.head_inputs(x), conv.weight, conv.bias, padding=conv.padding)
        torch.testing.assert_close(via, model(x), atol=1e-5, rtol=1e-5)


def test_embedding_space_head_is_the_cosine_nearest_mean_of_the_embedding() -> None:
    model = _model(1)
    batches = _batches()
    head = prototype_head(model, batches, K, 255, space="embedding")
    assert head.space == "embedding"
    assert head.counts.tolist()[:3] == [
        int((torch.cat([m for _, m in batches]) == c).sum()) for c in range(3)
    ]
    # reference: unit embeddings z = normalize(W u + b), class means renormalised, cosine argmax
    u, y = _features(model, batches)
    conv = model.projection.net[0]
    z = F.normalize(u @ conv.weight[:, :, 0, 0].double().T + conv.bias.double(), dim=1)
    mu = torch.stack([F.normalize(z[y == c].mean(0), dim=0) for c in range(K - 1)])
    cosine = z @ mu.T  # (N, K-1)
    load_head(model, head)
    with torch.no_grad():
        logits = torch.cat(
            [model(im).permute(0, 2, 3, 1).reshape(-1, K)[m.reshape(-1) != 255] for im, m in batches]
        ).double()
    # the head's logits are kappa * mu_c.(W u + b) = kappa * |W u + b| * cosine
    norm = (u @ conv.weight[:, :, 0, 0].double().T + conv.bias.double()).norm(dim=1, keepdim=True)
    torch.testing.assert_close(logits[:, : K - 1], head.scale * norm * cosine, rtol=1e-4, atol=1e-4)
    assert (logits.argmax(1) == cosine.argmax(1)).double().mean() > 0.999
    # the unlabeled class is never the top class on a labeled pixel, by at least the margin
    top_present = logits[:, : K - 1].max(1).values
    assert (top_present - logits[:, K - 1]).min() >= ABSENT_MARGIN - 1e-3


@pytest.mark.parametrize("arch", ["deeplabv3plus", "unet"])
def test_features_space_head_is_the_euclidean_nearest_mean(arch: str) -> None:
    model = _model(2, arch)
    batches = _batches()
    head = prototype_head(model, batches, K, 255)  # auto: two-layer projection -> features
    assert head.space == "features"
    u, y = _features(model, batches)
    means = torch.stack([u[y == c].mean(0) for c in range(K - 1)])
    dist = torch.cdist(u, means)  # (N, K-1)
    load_head(model, head)  # unet: a 3x3 head conv, the classifier in its centre tap
    with torch.no_grad():
        logits = torch.cat(
            [model(im).permute(0, 2, 3, 1).reshape(-1, K)[m.reshape(-1) != 255] for im, m in batches]
        ).double()
    # kappa * (u.m_c - |m_c|^2 / 2) = kappa * (|u|^2 - |u - m_c|^2) / 2
    expected = head.scale * 0.5 * ((u * u).sum(1, keepdim=True) - dist**2)
    torch.testing.assert_close(logits[:, : K - 1], expected, rtol=1e-3, atol=1e-3)
    assert (logits.argmax(1) == dist.argmin(1)).double().mean() > 0.999


def test_scale_minimises_the_labeled_pixels_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(500, 5, generator=g, dtype=torch.float64)
    targets = (logits + 0.8 * torch.randn(500, 5, generator=g, dtype=torch.float64)).argmax(1)
    kappa = fit_scale(logits, targets)
    ref = minimize_scalar(
        lambda s: F.cross_entropy(logits * math.exp(s), targets).item(), bounds=(-9, 9), method="bounded"
    )
    assert kappa == pytest.approx(math.exp(ref.x), rel=1e-3)


def test_reported_ce_and_accuracy_are_the_loaded_heads() -> None:
    model = _model(1)
    batches = _batches()
    head = prototype_head(model, batches, K, 255)  # every pixel sampled (fewer than max_pixels)
    load_head(model, head)
    with torch.no_grad():
        logits = torch.cat([model(im).permute(0, 2, 3, 1).reshape(-1, K) for im, _ in batches])
    y = torch.cat([m.reshape(-1) for _, m in batches])
    logits, y = logits[y != 255][:, : K - 1], y[y != 255]  # CE over the labeled classes
    assert head.train_ce == pytest.approx(F.cross_entropy(logits.double(), y).item(), rel=1e-4)
    assert head.train_acc == pytest.approx((logits.argmax(1) == y).double().mean().item(), abs=1e-6)


def test_sub_batches_row_chunks_and_sampling_give_the_same_head(monkeypatch: pytest.MonkeyPatch) -> None:
    import pixcon.models.prototype_head as ph

    model = _model(2)
    batches = _batches(size=64)
    whole = prototype_head(model, batches, K, 255, max_pixels=5000, seed=1)  # a 5000-pixel sample
    monkeypatch.setattr(ph, "MAX_FORWARD_PIXELS", 64 * 64)  # one image per forward pass
    monkeypatch.setattr(ph, "ROW_CHUNK", 1000)
    pieces = prototype_head(model, batches, K, 255, max_pixels=5000, seed=1)
    torch.testing.assert_close(pieces.weight, whole.weight, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pieces.bias, whole.bias, rtol=1e-5, atol=1e-5)
    assert pieces.scale == pytest.approx(whole.scale, rel=1e-6)
    other = prototype_head(model, batches, K, 255, max_pixels=5000, seed=2)
    assert other.scale != whole.scale  # the sample is the seed's


def test_an_absent_class_stays_below_every_labeled_pixel_in_feature_space() -> None:
    model = _model(2)
    batches = _batches(size=64)
    head = prototype_head(model, batches, K, 255, max_pixels=500)  # the scale from a small sample
    u, _ = _features(model, batches)
    logits = u @ head.weight.double().T + head.bias.double()
    gap = logits[:, : K - 1].max(1).values - logits[:, K - 1]
    assert gap.min() >= ABSENT_MARGIN - 1e-3


def test_modes_are_restored_and_the_pass_is_deterministic() -> None:
    model = _model(1).train()
    a = prototype_head(model, _batches(), K, 255, max_pixels=300, seed=3)
    assert model.training
    b = prototype_head(model, _batches(), K, 255, max_pixels=300, seed=3)
    torch.testing.assert_close(a.weight, b.weight)
    assert a.scale == b.scale


def test_bad_input_is_refused() -> None:
    model = _model(2)
    with pytest.raises(ValueError, match="proj_layers: 1"):
        prototype_head(model, _batches(), K, 255, space="embedding")
    empty = [(images, torch.full_like(masks, 255)) for images, masks in _batches()]
    with pytest.raises(ValueError, match="no labeled pixel"):
        prototype_head(model, empty, K, 255)
    head = prototype_head(model, _batches(), K, 255)
    other = create_segmenter(encoder="resnet18", num_classes=K + 1)
    with pytest.raises(ValueError, match="does not take"):
        load_head(other, head)


def test_auto_space_uses_the_embedding_only_where_pretraining_trained_it() -> None:
    from pixcon.models.prototype_head import resolve_space

    one, two = _model(1), _model(2)
    assert resolve_space(one, "auto") == "embedding"
    assert resolve_space(one, "auto", projection_trained=False) == "features"  # e.g. GLCNet's own heads
    assert resolve_space(two, "auto") == "features"
    assert resolve_space(two, "features") == "features"
