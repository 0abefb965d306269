"""The pixel contrastive loss over the global batch under DDP: negatives come from every rank.

Each rank samples its pixel budget locally, then the embeddings are all-gathered with
``torch.distributed.nn.functional.all_gather`` (its backward sums the gradients of all ranks into
each rank's own slice), labels and image ids with a plain all-gather. Every rank uses its own
pixels as anchors against all gathered pixels, so no similarity row is computed twice, and the
ranks' partial losses add up to the loss of one process on the concatenated batch.

The only value read back to the host is the ranks' pixel counts (all-gather needs the sizes);
with the fixed-shape sampler on CUDA they are equal, but the exchange stays for other callers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather

from pixcon.losses.contrastive import Form, Variant, pixel_contrastive_loss, pixel_contrastive_sum


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _pad(x: Tensor, rows: int) -> Tensor:
    if x.shape[0] == rows:
        return x.contiguous()
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad])


def gather_rows(x: Tensor, sizes: list[int], *, differentiable: bool) -> Tensor:
    """Concatenate every rank's ``x`` (first dims ``sizes``) in rank order; (sum(sizes), ...)."""
    padded = _pad(x, max(sizes))
    if differentiable:
        parts = all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def distributed_pixel_contrastive_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    form: Form = "zhao",
    ignore_index: int | None = 255,
    *,
    image_ids: Tensor | None = None,
    variant: Variant = "batch",
    block_size: int | None = None,
) -> Tensor:
    """This rank's share ``L_r`` of the global-batch pixel contrastive loss.

    ``sum_r L_r`` equals :func:`pixel_contrastive_loss` of the concatenation of all ranks' pixels
    (in rank order), and so do the gradients: backpropagating every rank's ``L_r`` gives each rank
    the gradient of the global loss with respect to its own ``z``. Without an initialised process
    group of more than one rank this is :func:`pixel_contrastive_loss`.

    Args:
        z: This rank's pixel embeddings, (n_r, D); n_r may differ between ranks.
        labels: (n_r,) class ids.
        image_ids: (n_r,) image index within this rank's batch (``within``/``cross`` variants);
            made globally unique here, keeping the (2k, 2k + 1) pairs of ``cross`` on one rank.
        Others: as in :func:`pixel_contrastive_loss`.
    """
    if not is_distributed():
        return pixel_contrastive_loss(
            z,
            labels,
            temperature,
            form,
            ignore_index,
            image_ids=image_ids,
            variant=variant,
            block_size=block_size,
        )
    rank = dist.get_rank()
    sizes = _gather_sizes(z.shape[0], z.device)
    z_all = gather_rows(z, sizes, differentiable=True)  # (N, D)
    labels_all = gather_rows(labels, sizes, differentiable=False)  # (N,)
    ids_all = None
    if image_ids is not None:
        # An even stride per rank: globally unique ids that keep cross's (2k, 2k + 1) pairs.
        # The stride stays on the device: no host synchronisation for it.
        ids = image_ids.long()
        local_max = (ids.max() + 1 if ids.numel() else ids.new_zeros(())).reshape(1)  # (1,)
        dist.all_reduce(local_max, op=dist.ReduceOp.MAX)
        stride = local_max + local_max % 2  # (1,)
        ids_all = gather_rows(ids + rank * stride, sizes, differentiable=False)
    start = sum(sizes[:rank])
    total, count = pixel_contrastive_sum(
        z_all,
        labels_all,
        temperature,
        form,
        ignore_index,
        image_ids=ids_all,
        variant=variant,
        block_size=block_size,
        anchors=(start, start + sizes[rank]),
    )
    dist.all_reduce(count)  # anchors with a positive, over all ranks
    return total / count.clamp(min=1)
