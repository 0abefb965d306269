"""Pixel contrastive loss over dense maps: label downsampling, class-balanced pixel budget."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from pixcon.losses.contrastive import VARIANTS, check_hyperparameters, pixel_contrastive_loss
from pixcon.losses.distributed import distributed_pixel_contrastive_loss, is_distributed


def downsample_labels(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour label downsampling, (B, H, W) -> (B, h, w), ids kept exactly."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    return F.interpolate(masks[:, None].float(), size=size, mode="nearest")[:, 0].long()


def balanced_quotas(counts: Tensor, budget: int) -> Tensor:
    """Pixels to take per class: equal shares of ``budget``, small classes give their rest away.

    Water-filling: classes with fewer pixels than the equal share take all of them, and what they
    leave is shared equally among the others. ``sum(quotas) == min(budget, sum(counts))``.

    Args:
        counts: Pixels available per class, shape (C,), int64.
        budget: Total number of pixels to keep, >= 0.

    Returns:
        Quotas per class, shape (C,), int64, ``0 <= quotas <= counts``.
    """
    # Water-filling on the host: K is small, and on a GPU two copies replace several syncs per class.
    avail = counts.tolist()  # (C,) ints, one device -> host copy
    quotas = [0] * len(avail)
    remaining = min(int(budget), sum(avail))
    present = [c for c in torch.argsort(counts).tolist() if avail[c] > 0]  # smallest classes first
    for k, c in enumerate(present):
        take = min(avail[c], remaining // (len(present) - k))
        quotas[c] = take
        remaining -= take
    # Integer division may leave a few pixels; hand them to classes that still have some.
    for c in reversed(present):
        if remaining == 0:
            break
        extra = min(remaining, avail[c] - quotas[c])
        quotas[c] += extra
        remaining -= extra
    return torch.tensor(quotas, dtype=counts.dtype, device=counts.device)


def balanced_sample(
    labels: Tensor, budget: int, ignore_index: int = 255, generator: torch.Generator | None = None
) -> Tensor:
    """Indices of at most ``budget`` non-ignored pixels, class-balanced (see :func:`balanced_quotas`).

    Args:
        labels: Class ids, shape (N,).
        budget: Maximum number of pixels to keep.
        ignore_index: Pixels with this label are never selected.
        generator: Optional RNG for the random choice within each class.

    Returns:
        Sorted indices into ``labels``, shape (M,), M <= budget.
    """
    valid = torch.nonzero(labels != ignore_index).squeeze(1)  # (V,)
    if valid.numel() <= budget:
        return valid
    y = labels[valid]  # (V,)
    _classes, inverse, counts = torch.unique(y, return_inverse=True, return_counts=True)  # (K,), (V,), (K,)
    quotas = balanced_quotas(counts, budget)  # (K,)
    # A random order within each class: sort by (class, uniform noise).
    noise = torch.rand(y.shape, generator=generator, device=y.device, dtype=torch.float64)  # in [0, 1)
    order = torch.argsort(inverse.double() * 2.0 + noise)  # (V,) grouped by class, random within
    starts = torch.cumsum(counts, 0) - counts  # (K,)
    rank = torch.arange(len(y), device=y.device) - starts[inverse[order]]  # (V,) rank inside its class
    keep = order[rank < quotas[inverse[order]]]  # (M,)
    return torch.sort(valid[keep]).values


class PixelContrastiveLoss(nn.Module):
    """Supervised pixel contrast on dense projections (Zhao et al., ICCV 2021).

    Downsamples the masks to the projection size (nearest), keeps a class-balanced budget of
    pixels (per batch for ``variant="batch"``, per image otherwise) and calls
    :func:`pixcon.losses.contrastive.pixel_contrastive_loss`.

    Args:
        temperature: t > 0; the paper uses 0.07-0.1.
        form: ``"zhao"`` or ``"supcon"``.
        variant: ``"batch"``, ``"within"`` or ``"cross"``.
        max_pixels: Pixel budget per batch (>= 2), per rank under DDP. Memory grows linearly with it.
        ignore_index: Label that is never sampled.
        gather: Under DDP (an initialised process group of more than one rank), contrast against
            the pixels of every rank (see :mod:`pixcon.losses.distributed`); the returned value is
            then this rank's share times the world size, so that DDP's gradient averaging yields
            the gradient of the global-batch loss, and the mean over ranks is its value.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        form: str = "zhao",
        variant: str = "batch",
        max_pixels: int = 4096,
        ignore_index: int = 255,
        gather: bool = True,
    ) -> None:
        super().__init__()
        check_hyperparameters(temperature, form, max_pixels)
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        self.temperature, self.form, self.variant = temperature, form, variant
        self.max_pixels, self.ignore_index, self.gather = max_pixels, ignore_index, gather

    def sample(self, proj: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flatten and subsample: proj (B, D, h, w), masks (B, H, W) -> z (M, D), labels (M,), image ids (M,)."""
        b, d, h, w = proj.shape
        labels = downsample_labels(masks, (h, w)).flatten()  # (B*h*w,)
        image_ids = torch.arange(b, device=proj.device).repeat_interleave(h * w)  # (B*h*w,)
        if self.variant == "batch":
            idx = balanced_sample(labels, self.max_pixels, self.ignore_index)
        else:
            per_image = max(2, self.max_pixels // b)
            idx = torch.cat(
                [
                    balanced_sample(labels[i * h * w : (i + 1) * h * w], per_image, self.ignore_index)
                    + i * h * w
                    for i in range(b)
                ]
            )
        z = proj.permute(0, 2, 3, 1).reshape(b * h * w, d)[idx]  # (M, D)
        return z, labels[idx], image_ids[idx]

    def forward(self, proj: Tensor, masks: Tensor) -> Tensor:
        """proj: (B, D, h, w) projection-head output; masks: (B, H, W) int64 labels. Returns a scalar."""
        if proj.dim() != 4 or masks.dim() != 3 or proj.shape[0] != masks.shape[0]:
            raise ValueError(
                f"expected proj (B, D, h, w) and masks (B, H, W), got {tuple(proj.shape)} and {tuple(masks.shape)}"
            )
        return self.contrast(*self.sample(proj, masks))

    def contrast(self, z: Tensor, labels: Tensor, image_ids: Tensor) -> Tensor:
        """The loss of already sampled pixels: z (M, D), labels (M,), image ids (M,) from
        :meth:`sample` (z need not be normalised: the loss normalises it)."""
        kwargs = dict(
            temperature=self.temperature,
            form=self.form,
            ignore_index=self.ignore_index,
            image_ids=image_ids,
            variant=self.variant,
        )
        if self.gather and is_distributed():
            # DDP averages gradients over ranks; scaling this rank's share by the world size makes
            # that average the gradient of the global-batch loss (and the mean over ranks its value).
            return distributed_pixel_contrastive_loss(z, labels, **kwargs) * dist.get_world_size()  # type: ignore[arg-type]
        return pixel_contrastive_loss(z, labels, **kwargs)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, form={self.form}, variant={self.variant}, max_pixels={self.max_pixels}"
