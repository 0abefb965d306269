"""The exact pixel contrastive loss as Triton kernels (flash-attention style), for CUDA tensors.

The loss is that of :mod:`pixcon.losses.contrastive` (Zhao et al. Eq. 1, or Khosla et al.'s
L_out), with the same variants, ignored pixels and DDP anchor rows. As in FlashAttention
(Dao et al. 2022) and Inf-CL (Cheng et al. 2024), row blocks of anchors stream over column tiles
of z with an online log-sum-exp; no N x N tensor exists in either pass:

* **Forward** (``_forward_kernel``, one program per block of ``BLOCK_M`` anchors): for
  ``form="zhao"`` a log-sum-exp L_i over the negatives, then a second sweep over the positives
  that sums softplus(L_i - a_ip) (the loss) and sigmoid(L_i - a_ip) (W_i, the weight of the
  negatives' gradient); for ``form="supcon"`` one sweep for the log-sum-exp over positives and
  negatives and the positives' logit sum. It saves L_i, W_i and |P(i)| per anchor.
* **Backward** recomputes each tile from those statistics. With G_ij = d l_i / d a_ij
  (zhao: exp(a_ij - L_i) W_i / |P(i)| on negatives, -sigmoid(L_i - a_ij) / |P(i)| on positives;
  supcon: exp(a_ij - L_i) - [j in P(i)] / |P(i)|), ``_backward_rows_kernel`` sums
  dz_i = sum_j G_ij z_j / t over column tiles and ``_backward_cols_kernel`` sums
  dz_j = sum_i G_ij z_i / t over anchor tiles: two kernels and no atomics, so the gradient is
  deterministic.

Pixels are sorted once on the device by (ignored last, positive scope, label) with three stable
sorts. An anchor's positives are then one contiguous column range (its segment) and every pixel
it can pair with one contiguous range (its positive scope: the batch, its image, or its image
pair), found with ``torch.searchsorted``; a program only visits the union of its rows' ranges.
Ignored pixels and rows outside the DDP anchor range are masked in the kernel, so nothing in this
path depends on data-dependent shapes and nothing synchronises with the host (the upstream
gradient is read by the kernels from device memory).

Precision: the similarities accumulate in float32. Float32 inputs are multiplied in IEEE float32
unless ``torch.backends.cuda.matmul.allow_tf32`` (or ``torch.set_float32_matmul_precision``
"high"/"medium") allows TF32; bfloat16/float16 inputs (the projection under autocast) are
normalised in float32, then multiplied in their own dtype with float32 accumulation. Float64
runs under Triton's interpreter only (``TRITON_INTERPRET=1``), where the tests check the kernel
against the float64 reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import triton  # type: ignore[import-untyped]
import triton.language as tl  # type: ignore[import-untyped]
from torch import Tensor

from pixcon.losses.blocked import lexsort

# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(Z, offs, mask, offs_d, D):
    """Rows ``offs`` of the (N, D) matrix Z, (len(offs), BLOCK_D), zero-padded."""
    return tl.load(
        Z + offs[:, None] * D + offs_d[None, :], mask=mask[:, None] & (offs_d[None, :] < D), other=0.0
    )


@triton.jit
def _pair_masks(seg_r, ng_r, orig_r, valid_r, seg_c, ng_c, orig_c, valid_c, HAS_NEG_GROUPS: tl.constexpr):
    """Positive and negative masks of a (rows, cols) tile.

    Segments are (positive scope, label) classes, so equal segments mean a positive pair (the
    pixel itself excluded by its original index); different segments a negative pair when the
    negative scopes agree too (they refine the positive scopes in every variant).
    """
    both = valid_r[:, None] & valid_c[None, :]
    same = seg_r[:, None] == seg_c[None, :]
    pos = both & same & (orig_r[:, None] != orig_c[None, :])
    neg = both & (seg_r[:, None] != seg_c[None, :])
    if HAS_NEG_GROUPS:
        neg = neg & (ng_r[:, None] == ng_c[None, :])
    return pos, neg


@triton.jit
def _column_tile(
    zr,
    Z,
    SEG,
    NG,
    ORIG,
    offs_n,
    in_n,
    offs_d,
    D,
    scale,
    seg_r,
    ng_r,
    orig_r,
    valid_r,
    HAS_NEG_GROUPS: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Columns ``offs_n`` against a block of anchor rows ``zr``: their rows of Z (cols, BLOCK_D), the
    scaled logits a = zr zc^T / t (rows, cols), and the tile's positive and negative masks."""
    zc = _load_rows(Z, offs_n, in_n, offs_d, D)
    a = tl.dot(zr, tl.trans(zc), out_dtype=ACC, input_precision=PRECISION) * scale
    seg_c = tl.load(SEG + offs_n, mask=in_n, other=-2)
    ng_c = tl.load(NG + offs_n, mask=in_n, other=-2)
    orig_c = tl.load(ORIG + offs_n, mask=in_n, other=-2)
    pos, neg = _pair_masks(seg_r, ng_r, orig_r, valid_r, seg_c, ng_c, orig_c, in_n, HAS_NEG_GROUPS)
    return zc, a, pos, neg


@triton.jit
def _grad_tile(a, pos, neg, lse, coef_neg, coef_pos, ZHAO: tl.constexpr):
    """G_ij = d l_i / d a_ij for a (rows, cols) tile; rows without positives have zero coefficients."""
    # A row without members has L = -inf and zero coefficients: shift it by 0 instead (no inf * 0).
    p = tl.exp(a - tl.where(lse == float("-inf"), 0.0, lse)[:, None])  # exp(a_ij - L_i)
    if ZHAO:
        g = tl.where(neg, p * coef_neg[:, None], 0.0)
        g -= tl.where(
            pos & (lse[:, None] > float("-inf")), coef_pos[:, None] / (1.0 + p), 0.0
        )  # sigmoid(L - a)
    else:
        g = tl.where(pos | neg, p * coef_neg[:, None], 0.0)
        g -= tl.where(pos, coef_pos[:, None], 0.0)
    return g


@triton.jit
def _forward_kernel(
    Z,  # (N, D) sorted columns
    ZR,  # (M, D) sorted anchors
    SEG,  # (N,) segment id of every sorted column
    NG,  # (N,) negative scope
    ORIG,  # (N,) original index
    NVALID,  # (1,) number of columns that are not ignored (they come first)
    R_SEG,
    R_NG,
    R_ORIG,
    R_POS,  # (M,) column position of every anchor (>= NVALID: ignored)
    R_OUT_LO,  # (M,) column range of the anchor's positive scope
    R_OUT_HI,
    R_POS_LO,  # (M,) column range of the anchor's segment
    R_POS_HI,
    OUT_LSE,  # (M,) L_i (zhao: negatives; supcon: positives and negatives)
    OUT_W,  # (M,) zhao: sum_p sigmoid(L_i - a_ip)
    OUT_LOSS,  # (M,) l_i, zero without positives
    OUT_NPOS,  # (M,) |P(i)|
    M,
    N,
    D,
    scale,  # 1 / t
    ZHAO: tl.constexpr,
    HAS_NEG_GROUPS: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < M
    nvalid = tl.load(NVALID)
    valid_r = in_m & (tl.load(R_POS + offs_m, mask=in_m, other=0) < nvalid)
    seg_r = tl.load(R_SEG + offs_m, mask=in_m, other=-1)
    ng_r = tl.load(R_NG + offs_m, mask=in_m, other=-1)
    orig_r = tl.load(R_ORIG + offs_m, mask=in_m, other=-1)
    lo = tl.min(tl.load(R_OUT_LO + offs_m, mask=valid_r, other=N), 0)
    hi = tl.max(tl.load(R_OUT_HI + offs_m, mask=valid_r, other=0), 0)
    zr = _load_rows(ZR, offs_m, in_m, offs_d, D)

    # Online log-sum-exp (running maximum m_i, running sum l_i) over the normaliser's set.
    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    pos_logits = tl.zeros([BLOCK_M], ACC)
    num_pos = tl.zeros([BLOCK_M], ACC)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        in_n = offs_n < hi
        _zc, a, pos, neg = _column_tile(
            zr, Z, SEG, NG, ORIG, offs_n, in_n, offs_d, D, scale,
            seg_r, ng_r, orig_r, valid_r, HAS_NEG_GROUPS, ACC, PRECISION,
        )  # fmt: skip
        if ZHAO:
            members = neg
        else:
            members = pos | neg
            pos_logits += tl.sum(tl.where(pos, a, 0.0), 1)
            num_pos += tl.sum(tl.where(pos, 1.0, 0.0), 1)
        m_new = tl.maximum(m_i, tl.max(tl.where(members, a, float("-inf")), 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no member yet: keep l_i = 0
        l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.where(members, tl.exp(a - m_safe[:, None]), 0.0), 1)
        m_i = m_new
    lse = tl.where(l_i > 0, m_i + tl.log(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))

    if ZHAO:
        # The positives' terms need the final L_i: a second sweep, over the anchors' segments only.
        plo = tl.min(tl.load(R_POS_LO + offs_m, mask=valid_r, other=N), 0)
        phi = tl.max(tl.load(R_POS_HI + offs_m, mask=valid_r, other=0), 0)
        softplus_sum = tl.zeros([BLOCK_M], ACC)
        sigmoid_sum = tl.zeros([BLOCK_M], ACC)
        for start in range(plo, phi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            in_n = offs_n < phi
            _zc, a, pos, _neg = _column_tile(
                zr, Z, SEG, NG, ORIG, offs_n, in_n, offs_d, D, scale,
                seg_r, ng_r, orig_r, valid_r, HAS_NEG_GROUPS, ACC, PRECISION,
            )  # fmt: skip
            x = lse[:, None] - a  # -inf without negatives: softplus and sigmoid are then 0
            softplus = tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))
            softplus_sum += tl.sum(tl.where(pos, softplus, 0.0), 1)
            sigmoid_sum += tl.sum(tl.where(pos, 1.0 / (1.0 + tl.exp(-x)), 0.0), 1)
            num_pos += tl.sum(tl.where(pos, 1.0, 0.0), 1)
        loss = tl.where(num_pos > 0, softplus_sum / tl.maximum(num_pos, 1.0), 0.0)
        tl.store(OUT_W + offs_m, sigmoid_sum, mask=in_m)
    else:
        loss = tl.where(num_pos > 0, lse - pos_logits / tl.maximum(num_pos, 1.0), 0.0)
    tl.store(OUT_LSE + offs_m, lse, mask=in_m)
    tl.store(OUT_LOSS + offs_m, loss, mask=in_m)
    tl.store(OUT_NPOS + offs_m, num_pos, mask=in_m)


@triton.jit
def _backward_rows_kernel(
    Z,
    ZR,
    SEG,
    NG,
    ORIG,
    NVALID,
    R_SEG,
    R_NG,
    R_ORIG,
    R_POS,
    R_OUT_LO,
    R_OUT_HI,
    LSE,  # (M,)
    COEF_NEG,  # (M,) zhao: W_i / |P(i)|; supcon: 1 for anchors with a positive
    COEF_POS,  # (M,) 1 / |P(i)|, 0 without positives
    GRAD_OUT,  # (1,) upstream gradient of the sum
    DZR,  # (M, D) out: anchor side of dz
    M,
    N,
    D,
    scale,
    ZHAO: tl.constexpr,
    HAS_NEG_GROUPS: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    in_m = offs_m < M
    nvalid = tl.load(NVALID)
    valid_r = in_m & (tl.load(R_POS + offs_m, mask=in_m, other=0) < nvalid)
    seg_r = tl.load(R_SEG + offs_m, mask=in_m, other=-1)
    ng_r = tl.load(R_NG + offs_m, mask=in_m, other=-1)
    orig_r = tl.load(R_ORIG + offs_m, mask=in_m, other=-1)
    lse = tl.load(LSE + offs_m, mask=in_m, other=0.0)
    coef_neg = tl.load(COEF_NEG + offs_m, mask=in_m, other=0.0)
    coef_pos = tl.load(COEF_POS + offs_m, mask=in_m, other=0.0)
    lo = tl.min(tl.load(R_OUT_LO + offs_m, mask=valid_r, other=N), 0)
    hi = tl.max(tl.load(R_OUT_HI + offs_m, mask=valid_r, other=0), 0)
    zr = _load_rows(ZR, offs_m, in_m, offs_d, D)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        in_n = offs_n < hi
        zc, a, pos, neg = _column_tile(
            zr, Z, SEG, NG, ORIG, offs_n, in_n, offs_d, D, scale,
            seg_r, ng_r, orig_r, valid_r, HAS_NEG_GROUPS, ACC, PRECISION,
        )  # fmt: skip
        g = _grad_tile(a, pos, neg, lse, coef_neg, coef_pos, ZHAO)
        acc += tl.dot(g.to(zc.dtype), zc, out_dtype=ACC, input_precision=PRECISION)
    acc *= tl.load(GRAD_OUT).to(ACC) * scale
    tl.store(DZR + offs_m[:, None] * D + offs_d[None, :], acc, mask=in_m[:, None] & (offs_d[None, :] < D))


@triton.jit
def _backward_cols_kernel(
    Z,
    ZR,
    SEG,
    NG,
    ORIG,
    NVALID,
    C_ROW_LO,  # (N,) anchor range of the column's positive scope
    C_ROW_HI,
    R_SEG,
    R_NG,
    R_ORIG,
    R_POS,
    LSE,
    COEF_NEG,
    COEF_POS,
    GRAD_OUT,
    DZC,  # (N, D) out: candidate side of dz, sorted columns
    M,
    N,
    D,
    scale,
    ZHAO: tl.constexpr,
    HAS_NEG_GROUPS: tl.constexpr,
    ACC: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    in_n = offs_n < N
    nvalid = tl.load(NVALID)
    valid_c = in_n & (offs_n < nvalid)
    seg_c = tl.load(SEG + offs_n, mask=in_n, other=-2)
    ng_c = tl.load(NG + offs_n, mask=in_n, other=-2)
    orig_c = tl.load(ORIG + offs_n, mask=in_n, other=-2)
    lo = tl.min(tl.load(C_ROW_LO + offs_n, mask=valid_c, other=M), 0)
    hi = tl.max(tl.load(C_ROW_HI + offs_n, mask=valid_c, other=0), 0)
    zc = _load_rows(Z, offs_n, in_n, offs_d, D)
    acc = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    for start in range(lo, hi, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        in_m = offs_m < hi
        valid_r = in_m & (tl.load(R_POS + offs_m, mask=in_m, other=0) < nvalid)
        seg_r = tl.load(R_SEG + offs_m, mask=in_m, other=-1)
        ng_r = tl.load(R_NG + offs_m, mask=in_m, other=-1)
        orig_r = tl.load(R_ORIG + offs_m, mask=in_m, other=-1)
        lse = tl.load(LSE + offs_m, mask=in_m, other=0.0)
        coef_neg = tl.load(COEF_NEG + offs_m, mask=in_m, other=0.0)
        coef_pos = tl.load(COEF_POS + offs_m, mask=in_m, other=0.0)
        zr = _load_rows(ZR, offs_m, in_m, offs_d, D)
        a = tl.dot(zr, tl.trans(zc), out_dtype=ACC, input_precision=PRECISION) * scale
        pos, neg = _pair_masks(seg_r, ng_r, orig_r, valid_r, seg_c, ng_c, orig_c, valid_c, HAS_NEG_GROUPS)
        g = _grad_tile(a, pos, neg, lse, coef_neg, coef_pos, ZHAO)
        acc += tl.dot(tl.trans(g.to(zr.dtype)), zr, out_dtype=ACC, input_precision=PRECISION)
    acc *= tl.load(GRAD_OUT).to(ACC) * scale
    tl.store(DZC + offs_n[:, None] * D + offs_d[None, :], acc, mask=in_n[:, None] & (offs_d[None, :] < D))


# ----------------------------------------------------------------------------------------------
# Host side: sorting, ranges, launch configuration, autograd
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Sorted order and ranges of one batch; every field lives on the device, nothing is read back.

    Columns are all N pixels sorted by (ignored, positive scope, label); rows are the M anchors in
    the same order.
    """

    order: Tensor  # (N,) original index of every sorted column
    position: Tensor  # (N,) sorted position of every pixel (the inverse of ``order``)
    anchor_rows: Tensor  # (M,) row of every anchor start, start + 1, ... in the sorted rows
    seg: Tensor  # (N,) int32 segment (positive scope, label) id, non-decreasing
    neg_scope: Tensor  # (N,) int32 negative scope
    orig: Tensor  # (N,) int32 original index
    num_valid: Tensor  # (1,) int64: columns that are not ignored
    row_pos: Tensor  # (M,) column position of every anchor, increasing
    row_ranges: tuple[Tensor, Tensor, Tensor, Tensor]  # (M,) int32 each: scope lo/hi, segment lo/hi
    col_ranges: tuple[Tensor, Tensor]  # (N,) int32 each: anchors of the column's scope, lo/hi
    has_neg_groups: bool
    anchors: tuple[int, int]


def _layout(
    labels: Tensor,
    ignore_index: int | None,
    pos_groups: Tensor | None,
    neg_groups: Tensor | None,
    anchors: tuple[int, int],
) -> _Layout:
    n = labels.shape[0]
    dev = labels.device
    zeros = torch.zeros(n, dtype=torch.long, device=dev)
    pg = zeros if pos_groups is None else pos_groups.long()
    ng = zeros if neg_groups is None else neg_groups.long()
    lab = labels.long()
    ignored = zeros if ignore_index is None else (lab == ignore_index).long()
    order = lexsort([ignored, pg, lab])  # (N,)
    ig_s, pg_s, lab_s = ignored[order], pg[order], lab[order]
    new_scope = torch.ones(n, dtype=torch.bool, device=dev)
    new_scope[1:] = (pg_s[1:] != pg_s[:-1]) | (ig_s[1:] != ig_s[:-1])
    new_seg = new_scope.clone()
    new_seg[1:] |= lab_s[1:] != lab_s[:-1]
    scope = torch.cumsum(new_scope, 0)  # (N,) non-decreasing ids
    seg = torch.cumsum(new_seg, 0)
    num_valid = (n - ignored.sum()).reshape(1)  # (1,) stays on the device

    position = torch.argsort(order)  # (N,) sorted position of every pixel
    row_pos = torch.sort(position[anchors[0] : anchors[1]]).values  # (M,)
    m = row_pos.shape[0]
    row_scope, row_seg = scope[row_pos], seg[row_pos]
    row_valid = row_pos < num_valid
    out_lo = torch.searchsorted(scope, row_scope, side="left")
    out_hi = torch.searchsorted(scope, row_scope, side="right")
    pos_lo = torch.searchsorted(seg, row_seg, side="left")
    pos_hi = torch.searchsorted(seg, row_seg, side="right")
    col_lo = torch.searchsorted(row_scope, scope, side="left")  # row_scope is non-decreasing too
    col_hi = torch.searchsorted(row_scope, scope, side="right")
    col_valid = torch.arange(n, device=dev) < num_valid

    def i32(x: Tensor) -> Tensor:
        return x.to(torch.int32).contiguous()

    return _Layout(
        order=order,
        position=position,
        anchor_rows=torch.searchsorted(row_pos, position[anchors[0] : anchors[1]]),
        seg=i32(seg),
        neg_scope=i32(ng[order]),
        orig=i32(order),
        num_valid=num_valid,
        row_pos=i32(row_pos),
        row_ranges=(
            i32(torch.where(row_valid, out_lo, n)),
            i32(torch.where(row_valid, out_hi, 0)),
            i32(torch.where(row_valid, pos_lo, n)),
            i32(torch.where(row_valid, pos_hi, 0)),
        ),
        col_ranges=(i32(torch.where(col_valid, col_lo, m)), i32(torch.where(col_valid, col_hi, 0))),
        has_neg_groups=neg_groups is not None,
        anchors=anchors,
    )


def _precision(dtype: torch.dtype) -> str:
    """Triton's ``input_precision`` for float32 products: TF32 only where torch allows it."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _blocks(d: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps) for embeddings of width ``d``.

    The kernels keep a (BLOCK, BLOCK_D) block of z and, in backward, a float32 (BLOCK, BLOCK_D)
    accumulator in registers: wide rows get short blocks. Chosen so that ptxas reports no (or a
    few bytes of) register spills for sm_90 (``tests/losses/test_fused_compile.py`` compiles them);
    ``bench/gpu_check.py`` times alternatives.
    """
    block_d = max(16, triton.next_power_of_2(d))
    two_bytes = dtype in (torch.float16, torch.bfloat16)
    if block_d <= 64 or dtype == torch.float64:
        return 64, 64, block_d, 4
    if block_d <= 256:
        return (64, 32, block_d, 8) if two_bytes and block_d == 256 else (32, 32, block_d, 4)
    return (32, 32, block_d, 8) if two_bytes else (32, 16, block_d, 8)


class _FusedPixelContrast(torch.autograd.Function):
    """Sum of per-anchor losses and the number of anchors with a positive, by the Triton kernels."""

    @staticmethod
    def forward(
        ctx: Any,  # torch.autograd.function.FunctionCtx, with attributes set here
        z: Tensor,
        layout: _Layout,
        temperature: float,
        zhao: bool,
        kernel_dtype: torch.dtype,
        blocks: tuple[int, ...] | None,
    ) -> tuple[Tensor, Tensor]:
        n, d = z.shape
        zs = z[layout.order].to(kernel_dtype).contiguous()  # (N, D) sorted columns
        zr = zs[layout.row_pos.long()].contiguous()  # (M, D) sorted anchors
        m = zr.shape[0]
        acc = torch.float64 if z.dtype == torch.float64 else torch.float32
        stats = torch.zeros(4, m, dtype=acc, device=z.device)  # L, W, loss, |P|
        block_m, block_n, block_d, warps = _blocks(d, kernel_dtype)
        if blocks is not None:
            block_m, block_n = blocks[:2]
            warps = blocks[2] if len(blocks) > 2 else warps
        row_seg, row_ng = layout.seg[layout.row_pos.long()], layout.neg_scope[layout.row_pos.long()]
        row_orig32 = layout.orig[layout.row_pos.long()]
        common = dict(
            ZHAO=zhao,
            HAS_NEG_GROUPS=layout.has_neg_groups,
            ACC=tl.float64 if acc == torch.float64 else tl.float32,
            PRECISION=_precision(kernel_dtype),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            num_warps=warps,
            num_stages=2,
        )
        _forward_kernel[(triton.cdiv(m, block_m),)](
            zs, zr, layout.seg, layout.neg_scope, layout.orig, layout.num_valid,
            row_seg, row_ng, row_orig32, layout.row_pos, *layout.row_ranges,
            stats[0], stats[1], stats[2], stats[3],
            m, n, d, 1.0 / temperature,
            **common,
        )  # fmt: skip
        total = stats[2].sum()
        count = (stats[3] > 0).sum()
        ctx.save_for_backward(zs, zr, stats, row_seg, row_ng, row_orig32)
        ctx.layout, ctx.temperature, ctx.common, ctx.in_dtype = layout, temperature, common, z.dtype
        ctx.anchors = layout.anchors
        ctx.mark_non_differentiable(count)
        return total.to(z.dtype), count

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_count: Tensor) -> tuple[Tensor | None, ...]:
        zs, zr, stats, row_seg, row_ng, row_orig32 = ctx.saved_tensors
        layout: _Layout = ctx.layout
        n, d = zs.shape
        m = zr.shape[0]
        lse, sig_sum, _loss, num_pos = stats
        coef_pos = torch.where(num_pos > 0, 1.0 / num_pos.clamp(min=1.0), 0.0)  # (M,)
        coef_neg = sig_sum * coef_pos if ctx.common["ZHAO"] else (num_pos > 0).to(stats.dtype)
        grad_out = grad_total.reshape(1).to(stats.dtype).contiguous()
        dzr = torch.empty(m, d, dtype=stats.dtype, device=zs.device)
        dzc = torch.empty(n, d, dtype=stats.dtype, device=zs.device)
        common = ctx.common
        scale = 1.0 / ctx.temperature
        _backward_rows_kernel[(triton.cdiv(m, common["BLOCK_M"]),)](
            zs, zr, layout.seg, layout.neg_scope, layout.orig, layout.num_valid,
            row_seg, row_ng, row_orig32, layout.row_pos, layout.row_ranges[0], layout.row_ranges[1],
            lse, coef_neg, coef_pos, grad_out, dzr,
            m, n, d, scale,
            **common,
        )  # fmt: skip
        _backward_cols_kernel[(triton.cdiv(n, common["BLOCK_N"]),)](
            zs, zr, layout.seg, layout.neg_scope, layout.orig, layout.num_valid,
            *layout.col_ranges,
            row_seg, row_ng, row_orig32, layout.row_pos,
            lse, coef_neg, coef_pos, grad_out, dzc,
            m, n, d, scale,
            **common,
        )  # fmt: skip
        # Gathers only (no scatter): deterministic, and nothing waits for the host.
        grad = dzc.index_select(0, layout.position)  # (N, D) candidate side, in the input order
        start, stop = ctx.anchors
        grad[start:stop] += dzr.index_select(0, layout.anchor_rows)  # anchor side
        return grad.to(ctx.in_dtype), None, None, None, None, None


def fused_pixel_contrastive_sum(
    z: Tensor,
    labels: Tensor,
    temperature: float,
    form: str,
    ignore_index: int | None,
    *,
    pos_groups: Tensor | None,
    neg_groups: Tensor | None,
    anchors: tuple[int, int],
    blocks: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`pixcon.losses.contrastive.pixel_contrastive_sum` by the Triton kernels.

    Arguments are validated by the caller. ``z`` (N, D) is normalised here in float32 (float64
    stays float64); the kernels multiply in ``z``'s dtype for bfloat16/float16 inputs.
    ``pos_groups``/``neg_groups`` are the variant's pair scopes
    (:func:`pixcon.losses.contrastive.pair_scopes`; equal negative scopes must imply equal
    positive scopes). ``blocks`` = ``(BLOCK_M, BLOCK_N)`` or ``(BLOCK_M, BLOCK_N, num_warps)``
    (powers of two, blocks >= 16) overrides the launch configuration (tests, tuning).
    """
    count_zero = torch.zeros((), dtype=torch.long, device=z.device)
    if anchors[1] <= anchors[0] or z.shape[0] < 2:
        return z.sum() * 0.0, count_zero
    kernel_dtype = z.dtype
    zn = F.normalize(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, dim=1)  # (N, D)
    layout = _layout(labels, ignore_index, pos_groups, neg_groups, anchors)
    total, count = _FusedPixelContrast.apply(zn, layout, temperature, form == "zhao", kernel_dtype, blocks)
    return total, count
