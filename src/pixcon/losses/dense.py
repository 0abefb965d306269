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


def water_fill(counts: Tensor, budget: int) -> Tensor:
    """:func:`balanced_quotas` on the device, without reading anything back to the host.

    The same water-filling in closed form: with the present classes sorted by count
    (c_(0) <= c_(1) <= ...; ties by position) and P_k the sum of the k smallest, the first k*
    classes with c_(k) * (K - k) <= B - P_k are taken whole, and the remaining R = B - P_k* pixels
    are shared by the other m = K - k* classes as R // m each, the largest R % m classes taking
    one more (what the sequential version gives). Absent classes (count 0) get 0.

    Args:
        counts: Pixels available per class, shape (C,), int64, zeros allowed anywhere.
        budget: Total number of pixels to keep, >= 0.

    Returns:
        Quotas per class, shape (C,), int64, ``0 <= quotas <= counts``,
        ``sum(quotas) == min(budget, sum(counts))``.
    """
    c = counts.long()
    size = c.shape[0]
    present = c > 0
    num = present.sum()  # K, a device scalar
    key = torch.where(present, c, c.max() + 1 if size else c)  # absent classes last
    order = torch.sort(key, stable=True).indices  # (C,)
    k = torch.arange(size, device=c.device)  # (C,)
    cs = torch.where(k < num, c[order], 0)  # (C,) ascending counts, then zeros
    total = cs.sum()
    target = torch.clamp(total, max=budget)  # min(budget, sum(counts))
    before = torch.cumsum(cs, 0) - cs  # (C,) P_k
    whole = (k < num) & (cs * (num - k) <= target - before)  # taken whole, if all before are too
    k_star = torch.cumprod(whole.long(), 0).sum()  # leading run of whole classes
    before_ext = torch.cat([before, total.reshape(1)])  # (C + 1,)
    rest = target - before_ext.gather(0, k_star.reshape(1))[0]  # gather: no host read of k*
    share_n = (num - k_star).clamp(min=1)
    share = rest // share_n + (k >= num - rest % share_n).long()  # (C,) the last classes one more
    quotas_sorted = torch.where(k < k_star, cs, torch.where(k < num, torch.minimum(cs, share), 0))
    return quotas_sorted.gather(0, torch.argsort(order))  # (C,) back in class order


def balanced_sample_fixed(
    labels: Tensor, budget: int, ignore_index: int = 255, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`balanced_sample` with a fixed output size and no host synchronisation (for CUDA).

    The same class quotas (:func:`water_fill`) and a uniform choice within each class, but the
    result always has ``min(budget, N)`` entries: when fewer pixels are labeled, the last entries
    are filler, marked False in ``keep`` (the caller gives them ``ignore_index``). Nothing depends
    on data-dependent shapes, so ``torch.cuda.set_sync_debug_mode("error")`` stays silent.

    Args:
        labels: Class ids, shape (N,).
        budget: Maximum number of pixels to keep, >= 0.
        ignore_index: Pixels with this label are never kept.
        generator: Optional RNG (on ``labels``' device) for the choice within each class.

    Returns:
        ``(idx, keep)``: indices into ``labels`` and whether each is a kept pixel, shape
        (min(budget, N),) each; the kept ones come first, grouped by class.
    """
    n = labels.shape[0]
    dev = labels.device
    valid = labels != ignore_index  # (N,)
    y = torch.where(valid, labels, labels.max() + 1 if n else labels)  # ignored pixels sort last
    noise = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)  # (N,)
    order = torch.argsort(noise)  # (N,) random
    order = order[torch.sort(y[order], stable=True).indices]  # (N,) by class, random within
    ys, vs = y[order], valid[order]
    start = torch.searchsorted(ys, ys, side="left")  # (N,) first position of the pixel's class
    rank = torch.arange(n, device=dev) - start  # (N,) rank inside its class
    count = torch.searchsorted(ys, ys, side="right") - start  # (N,)
    quotas = water_fill(torch.where(vs & (rank == 0), count, 0), budget)  # (N,) at each class's first
    take = vs & (rank < quotas[start])  # (N,)
    first = torch.sort((~take).to(torch.uint8), stable=True).indices[: min(budget, n)]  # kept first
    return order[first], take[first]


ALL_PIXELS = "all"


class PixelContrastiveLoss(nn.Module):
    """Supervised pixel contrast on dense projections (Zhao et al., ICCV 2021).

    Downsamples the masks to the projection size (nearest), keeps a class-balanced budget of
    pixels (per batch for ``variant="batch"``, per image otherwise) and calls
    :func:`pixcon.losses.contrastive.pixel_contrastive_loss`.

    On CUDA tensors the budget is drawn by :func:`balanced_sample_fixed` (fixed shapes, no host
    synchronisation; when fewer pixels are labeled than the budget, the filler slots carry
    ``ignore_index``), on the CPU by :func:`balanced_sample`; both take the same class quotas.

    Args:
        temperature: t > 0; the paper uses 0.07-0.1.
        form: ``"zhao"`` or ``"supcon"``.
        variant: ``"batch"``, ``"within"`` or ``"cross"``.
        max_pixels: Pixel budget per batch (>= 2), per rank under DDP, or ``"all"``: every
            labeled pixel, no sampling (affordable with the fused kernel on a GPU; the loss's time
            grows with the square of the number of pixels).
        ignore_index: Label that is never sampled.
        gather: Under DDP (an initialised process group of more than one rank), contrast against
            the pixels of every rank (see :mod:`pixcon.losses.distributed`); the returned value is
            then this rank's share times the world size, so that DDP's gradient averaging yields
            the gradient of the global-batch loss, and the mean over ranks is its value.
        fixed_shapes: Sample with :func:`balanced_sample_fixed`; None: on CUDA tensors only.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        form: str = "zhao",
        variant: str = "batch",
        max_pixels: int | str = 4096,
        ignore_index: int = 255,
        gather: bool = True,
        fixed_shapes: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(max_pixels, str) and max_pixels != ALL_PIXELS:
            raise ValueError(f"max_pixels must be an int >= 2 or {ALL_PIXELS!r}, got {max_pixels!r}")
        check_hyperparameters(temperature, form, 2 if max_pixels == ALL_PIXELS else max_pixels)  # type: ignore[arg-type]
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(VARIANTS)}")
        self.temperature, self.form, self.variant = temperature, form, variant
        self.max_pixels, self.ignore_index, self.gather = max_pixels, ignore_index, gather
        self.fixed_shapes = fixed_shapes

    def _sample(self, labels: Tensor, budget: int) -> tuple[Tensor, Tensor | None]:
        """Indices into ``labels`` and, on CUDA, which of them are kept (None: all of them)."""
        if labels.is_cuda if self.fixed_shapes is None else self.fixed_shapes:
            return balanced_sample_fixed(labels, budget, self.ignore_index)
        return balanced_sample(labels, budget, self.ignore_index), None

    def sample(self, proj: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Flatten and subsample: proj (B, D, h, w), masks (B, H, W) -> z (M, D), labels (M,), image ids (M,)."""
        b, d, h, w = proj.shape
        labels = downsample_labels(masks, (h, w)).flatten()  # (B*h*w,)
        image_ids = torch.arange(b, device=proj.device).repeat_interleave(h * w)  # (B*h*w,)
        z = proj.permute(0, 2, 3, 1).reshape(b * h * w, d)  # (B*h*w, D)
        if self.max_pixels == ALL_PIXELS:  # every pixel; the loss drops the ignored ones
            return z, labels, image_ids
        if self.variant == "batch":
            idx, keep = self._sample(labels, int(self.max_pixels))
        else:
            per_image = max(2, int(self.max_pixels) // b)
            parts = [self._sample(labels[i * h * w : (i + 1) * h * w], per_image) for i in range(b)]
            idx = torch.cat([p[0] + i * h * w for i, p in enumerate(parts)])  # (M,)
            keep = None if parts[0][1] is None else torch.cat([p[1] for p in parts])  # type: ignore[misc]
        picked = labels[idx]  # (M,)
        if keep is not None:
            picked = torch.where(keep, picked, self.ignore_index)
        return z[idx], picked, image_ids[idx]

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
