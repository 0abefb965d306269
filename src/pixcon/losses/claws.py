"""CLAWS (Herrera-Gerena et al., "CLAWS: Contrastive Learning with hard Attention and Weak
Supervision", arXiv 2112.00847) for dense prediction.

CLAWS trains a SimCLR-style network on crops whose background is removed by a binary *hard
attention* mask before the two views are contrasted, uses the class labels as weak supervision
(contrast within class clusters, i.e. a supervised contrastive loss) and evaluates the embeddings
by clustering them (k-means and a Gaussian mixture, scored with NMI/ARI: see
:func:`pixcon.clustering.cluster_scores`).

Mapping to segmentation (pixcon):

* **Hard attention mask**, a (B, H, W) boolean map per image, from one of two sources:
  ``"labels"`` -- attended are the labeled pixels whose class is not listed in
  ``background_classes`` (so ``ignore_index`` pixels are always masked out; with
  ``background_classes=(0,)`` on VOC this is CLAWS's object-vs-background mask);
  ``"feature_norm"`` -- the model's own attention: the fraction ``attend_fraction`` of pixels with
  the largest decoder-feature norm per image (no labels needed), upsampled (nearest) to the image.
* **Masking**: ``images * mask``, i.e. unattended input pixels are exactly 0 in every view; the
  mask is applied to each view after the photometric jitter, so the zeros stay zeros.
* **Views**: two pixel-aligned photometric views (:func:`aligned_view`: brightness, contrast and
  saturation jitter in the spirit of SimCLR's colour distortion; no geometric change, so the
  labels of one view are the labels of the other).
* **Weak supervision**: the supervised pixel contrast of Zhao et al. (ICCV 2021) over the attended
  pixels of both views (unattended pixels are relabeled ``ignore_index``): the same pixel in the
  two views, and any two pixels of a class, are positives.

With label masks on fully labeled data and no background class the mask is all ones and CLAWS
reduces to two-view supervised pixel contrast; the mask matters for partially labeled masks,
declared background classes, or the feature-norm source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pixcon.losses.contrastive import pixel_contrastive_loss
from pixcon.losses.dense import balanced_sample, downsample_labels

__all__ = [
    "ATTENTION_SOURCES",
    "CLAWSLoss",
    "aligned_view",
    "attended_labels",
    "attention_from_feature_norm",
    "attention_from_labels",
    "hard_attention",
]

ATTENTION_SOURCES: tuple[str, ...] = ("labels", "feature_norm")


def attention_from_labels(
    masks: Tensor, ignore_index: int | None = 255, background_classes: Sequence[int] = ()
) -> Tensor:
    """Hard attention from labels: labeled pixels whose class is not a background class.

    Args:
        masks: Class ids, shape (B, H, W).
        ignore_index: Never attended (None: no such label).
        background_classes: Class ids that are masked out, e.g. ``(0,)`` for VOC's background.

    Returns:
        Boolean attention, shape (B, H, W).
    """
    attend = torch.ones_like(masks, dtype=torch.bool)
    if ignore_index is not None:
        attend &= masks != ignore_index
    for c in background_classes:
        attend &= masks != int(c)
    return attend


def attention_from_feature_norm(features: Tensor, size: tuple[int, int], fraction: float) -> Tensor:
    """Hard attention from the model: the pixels of largest feature norm, per image.

    Args:
        features: Feature map, shape (B, C, h, w), e.g. the decoder output of ``Segmenter.features``.
        size: (H, W) of the images; the map is upsampled by nearest neighbour.
        fraction: Share of the h * w feature pixels attended per image, in (0, 1]; exactly
            ``ceil(fraction * h * w)`` of them (ties broken by position).

    Returns:
        Boolean attention, shape (B, H, W).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    b, _, h, w = features.shape
    norms = features.detach().float().norm(dim=1).flatten(1)  # (B, h*w)
    k = max(1, math.ceil(fraction * h * w))
    top = norms.topk(k, dim=1).indices  # (B, k)
    attend = torch.zeros_like(norms, dtype=torch.bool).scatter_(1, top, True).view(b, 1, h, w)
    return torch.nn.functional.interpolate(attend.float(), size=size, mode="nearest")[:, 0] > 0.5


def hard_attention(images: Tensor, attention: Tensor) -> Tensor:
    """Zero the unattended pixels: ``images * attention`` over every channel.

    Args:
        images: (B, C, H, W).
        attention: Boolean (or {0, 1}), shape (B, H, W).

    Returns:
        (B, C, H, W), equal to ``images`` where attended and exactly 0 elsewhere.
    """
    if attention.shape != images.shape[:1] + images.shape[2:]:
        raise ValueError(
            f"attention must have shape (B, H, W), got {tuple(attention.shape)} for {tuple(images.shape)}"
        )
    return images * attention[:, None].to(images.dtype)


def attended_labels(masks: Tensor, attention: Tensor, ignore_index: int = 255) -> Tensor:
    """Labels of the attended pixels, ``ignore_index`` elsewhere: (B, H, W) -> (B, H, W)."""
    return torch.where(attention.bool(), masks, torch.full_like(masks, ignore_index))


def aligned_view(images: Tensor, strength: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """A pixel-aligned photometric view: per-image brightness, contrast and saturation jitter.

    Factors are drawn uniformly from [1 - 0.8 s, 1 + 0.8 s] (SimCLR's colour-jitter scale for
    strength s, without hue); saturation only applies to 3-band images. Geometry is unchanged, so
    the masks of ``images`` are the masks of the view. Values are clamped to [0, 1].

    Args:
        images: (B, C, H, W) in [0, 1].
        strength: s >= 0; 0 returns the images unchanged.
        generator: CPU generator of the factors; None uses the global RNG.

    Returns:
        (B, C, H, W) in [0, 1].
    """
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    if strength == 0:
        return images
    b, c = images.shape[:2]
    factors = 1.0 + 0.8 * strength * (2.0 * torch.rand(3, b, generator=generator) - 1.0)  # (3, B)
    factors = factors.to(device=images.device, dtype=images.dtype)[..., None, None, None]  # (3, B, 1, 1, 1)
    x = images * factors[0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    x = (x - mean) * factors[1] + mean
    if c == 3:
        grey = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]  # (B, 1, H, W)
        x = grey + (x - grey) * factors[2]
    return x.clamp(0.0, 1.0)


class CLAWSLoss(nn.Module):
    """Supervised pixel contrast over the attended pixels of several aligned views.

    Samples one class-balanced set of pixel positions (``max_pixels`` per view in total), takes
    each view's embedding at those positions and calls
    :func:`pixcon.losses.contrastive.pixel_contrastive_loss` on all of them with the labels
    repeated: the same position in two views is a positive pair, as is any pair of one class.

    Args:
        temperature: t > 0.
        max_pixels: Pixel budget summed over the views (>= 2 per view).
        ignore_index: Label of unattended and unlabeled pixels.
    """

    def __init__(self, temperature: float = 0.1, max_pixels: int = 4096, ignore_index: int = 255) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if max_pixels < 2:
            raise ValueError(f"max_pixels must be >= 2, got {max_pixels}")
        self.temperature, self.max_pixels, self.ignore_index = (
            float(temperature),
            int(max_pixels),
            ignore_index,
        )

    def forward(self, views: Sequence[Tensor], masks: Tensor) -> Tensor:
        """views: V projections (B, D, h, w); masks: attended labels (B, H, W). Returns a scalar."""
        if not views or any(v.shape != views[0].shape or v.dim() != 4 for v in views):
            raise ValueError(
                f"expected V >= 1 projections of one shape (B, D, h, w), got {[tuple(v.shape) for v in views]}"
            )
        b, d, h, w = views[0].shape
        labels = downsample_labels(masks, (h, w)).flatten()  # (B*h*w,)
        idx = balanced_sample(labels, max(2, self.max_pixels // len(views)), self.ignore_index)  # (M,)
        z = torch.cat([v.permute(0, 2, 3, 1).reshape(b * h * w, d)[idx] for v in views])  # (V*M, D)
        y = labels[idx].repeat(len(views))  # (V*M,)
        return pixel_contrastive_loss(z, y, self.temperature, ignore_index=self.ignore_index)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, max_pixels={self.max_pixels}"
