"""Bench-only reference: the blocked loss as it was before the symmetric tiles (row blocks over all columns).

Kept verbatim (tile masks, forward, gradient, autograd Function) so that ``bench/loss.py`` and
``bench/train_step.py`` can time today's implementation against the new paths in the same run.
Not part of the library; the library's exact loss is :func:`pixcon.losses.contrastive.pixel_contrastive_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from pixcon.losses.contrastive import _prepare, default_block_size


def _tile_masks(
    rows: slice,
    labels: Tensor,
    pos_groups: Tensor | None,
    neg_groups: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Positive and negative masks of the anchors in ``rows`` against all pixels, (b, N) each."""
    n = labels.shape[0]
    same = labels[rows, None] == labels[None, :]  # (b, N)
    not_self = torch.arange(rows.start, rows.stop, device=labels.device)[:, None] != torch.arange(
        n, device=labels.device
    )  # (b, N)
    pos = same & not_self
    neg = ~same
    if pos_groups is not None:
        pos &= pos_groups[rows, None] == pos_groups[None, :]
    if neg_groups is not None:
        neg &= neg_groups[rows, None] == neg_groups[None, :]
    return pos, neg


def _tile_forward(logits: Tensor, pos: Tensor, neg: Tensor, form: str) -> tuple[Tensor, Tensor, Tensor]:
    """Per-anchor loss, positive count and log-normaliser for one tile.

    Args:
        logits: a_ij for the tile, (b, N). pos, neg: (b, N) masks.

    Returns:
        ``(loss_b, num_pos_b, log_norm_b)``: the per-anchor loss before averaging (0 where the
        anchor has no positive), |P(i)|, and log of the negative sum (zhao) or of the full
        denominator (supcon); about -3.4e38 (float32) where that set is empty.
    """
    # A finite fill instead of -inf: an empty set then gives a huge negative log-normaliser whose
    # contributions vanish, and autograd through logsumexp stays free of NaN (the dense path).
    neg_inf = torch.finfo(logits.dtype).min
    num_pos = pos.sum(dim=1)  # (b,)
    if form == "zhao":
        log_norm = torch.logsumexp(logits.masked_fill(~neg, neg_inf), dim=1)  # (b,)
        # log(exp(a_ip) / (exp(a_ip) + sum_n exp(a_in))) = -softplus(log_neg - a_ip), stable for -inf.
        log_prob = -F.softplus(log_norm[:, None] - logits)  # (b, N)
    else:
        log_norm = torch.logsumexp(logits.masked_fill(~(pos | neg), neg_inf), dim=1)  # (b,)
        log_prob = logits - log_norm[:, None]  # (b, N)
    pos_sum = torch.where(pos, log_prob, 0.0).sum(dim=1)  # (b,)
    loss = -pos_sum / num_pos.clamp(min=1)  # (b,)
    return loss, num_pos, log_norm


def _tile_grad(
    logits: Tensor, pos: Tensor, neg: Tensor, log_norm: Tensor, num_pos: Tensor, form: str
) -> Tensor:
    """d l_i / d a_ij for one tile, (b, N); rows of anchors without positives are zero."""
    inv_pos = 1.0 / num_pos.clamp(min=1).to(logits.dtype)  # (b,)
    if form == "zhao":
        # With q_ip = exp(a_ip) / (exp(a_ip) + S_i) and S_i = sum_n exp(a_in):
        #   d l_i / d a_ip = -(1 - q_ip) / |P|,   d l_i / d a_in = exp(a_in) / S_i * sum_p (1 - q_ip) / |P|.
        one_minus_q = torch.where(pos, torch.sigmoid(log_norm[:, None] - logits), 0.0)  # (b, N)
        weight = one_minus_q.sum(dim=1) * inv_pos  # (b,)
        softmax_neg = torch.where(neg, torch.exp(logits - log_norm[:, None]), 0.0)  # (b, N)
        return softmax_neg * weight[:, None] - one_minus_q * inv_pos[:, None]
    # supcon: d l_i / d a_ik = softmax_ik over the denominator set - [k in P(i)] / |P|.
    softmax = torch.where(pos | neg, torch.exp(logits - log_norm[:, None]), 0.0)  # (b, N)
    grad = softmax - pos.to(logits.dtype) * inv_pos[:, None]
    return torch.where((num_pos > 0)[:, None], grad, 0.0)


class _BlockedPixelContrast(torch.autograd.Function):
    """Sum of per-anchor losses over L2-normalised ``z`` and the number of anchors with a positive.

    Anchors are the rows ``row_start:row_stop`` (all rows by default; a rank's own pixels under
    DDP), contrasted against all N pixels. Rows are processed in blocks; each tile holds complete
    rows, so its log-normalisers are known inside the tile and the analytic gradient can be
    accumulated in the same pass. Only the (N, D) gradient is saved for backward, and no tile is
    computed twice. Under ``torch.no_grad`` the gradient is skipped. O(N * block) memory.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        z: Tensor,
        labels: Tensor,
        pos_groups: Tensor | None,
        neg_groups: Tensor | None,
        temperature: float,
        form: str,
        block_size: int,
        row_start: int,
        row_stop: int,
    ) -> tuple[Tensor, Tensor]:
        need_grad = ctx.needs_input_grad[0]
        zt = (z.t() / temperature).contiguous()  # (D, N), 1/t folded in once
        grad_z = torch.zeros_like(z) if need_grad else None  # (N, D)
        total = z.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=z.device)  # a tensor: no host sync per tile
        for start in range(row_start, row_stop, block_size):
            rows = slice(start, min(start + block_size, row_stop))
            logits = z[rows] @ zt  # (b, N)
            pos, neg = _tile_masks(rows, labels, pos_groups, neg_groups)
            loss_b, num_pos, log_norm = _tile_forward(logits, pos, neg, form)
            total += loss_b.sum()
            count += (num_pos > 0).sum()
            if grad_z is not None:
                g = _tile_grad(logits, pos, neg, log_norm, num_pos, form)  # (b, N), d l_i / d a_ij
                grad_z[rows] += g @ z  # anchor side: sum_j g_ij z_j, (b, D)
                grad_z.addmm_(g.t(), z[rows])  # candidate side: sum_i g_ij z_i, (N, D)
        if grad_z is not None:
            ctx.save_for_backward(grad_z.div_(temperature))
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_total: Tensor, _grad_count: Tensor):  # type: ignore[override]
        (grad_z,) = ctx.saved_tensors
        return grad_z * grad_total, None, None, None, None, None, None, None, None


def reference_blocked_loss(
    z: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    form: str = "zhao",
    ignore_index: int | None = 255,
    *,
    image_ids: Tensor | None = None,
    variant: str = "batch",
    block_size: int | None = None,
) -> Tensor:
    """The pre-symmetric blocked loss: same value as ``pixel_contrastive_loss``, older schedule."""
    z_all = z
    z, labels, pos_groups, neg_groups = _prepare(
        z, labels, temperature, form, ignore_index, image_ids, variant
    )
    n = z.shape[0]
    if n < 2:
        return z_all.sum() * 0.0
    block = default_block_size(n) if block_size is None else int(block_size)
    total, count = _BlockedPixelContrast.apply(
        z, labels, pos_groups, neg_groups, float(temperature), form, block, 0, n
    )
    return total / count.clamp(min=1)
