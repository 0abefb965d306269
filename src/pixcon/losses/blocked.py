"""The exact pixel contrastive loss in torch: symmetric tiles over label-sorted pixels.

This is the CPU path of :func:`pixcon.losses.contrastive.pixel_contrastive_sum` (and its fallback
on a GPU without Triton). The math is that of :mod:`pixcon.losses.contrastive`; this module only
decides in which order, and how often, the entries a_ij = z_i . z_j / t are computed.

Three observations make it cheaper than streaming row blocks over all columns:

1. **Symmetry.** a_ij = a_ji and the pair masks are symmetric, so one tile of z zᵀ serves its row
   block and its column block: row sums feed the anchors of the rows, column sums those of the
   columns, and the gradient of both sides goes through one matrix S = G_IJ + G_JIᵀ
   (dz_I += S z_J, dz_J += Sᵀ z_I). Only the upper triangle of tiles is visited.
2. **Sorting by label.** Pixels are sorted by (anchor?, positive scope, negative scope, label), so
   a class of one scope is a contiguous *segment*. A tile between two segments is then all
   positives, all negatives or nothing, and needs no mask at all (skipped when nothing). Segments
   smaller than ``_MIN_PURE`` pixels are packed into mixed blocks whose tiles use masks.
3. **A fixed shift.** Rows are L2-normalised, so a_ij <= 1/t and exp(a_ij - 1/t) lies in
   [exp(-2/t), 1]: one exponential per entry serves the log-sum-exp of both sides, no running
   maximum is needed (tiles are computed in float64 where exp(-2/t) would leave float32's normal
   range, i.e. t < 1/40).

The passes, per tile of the upper triangle (``form="zhao"``: L_i is the log-sum-exp over the
negatives; ``"supcon"``: over positives and negatives):

* ``A``: the normalisers s_i = sum_j exp(a_ij - 1/t) (and, for supcon, the positives' logit sums);
* ``W`` (zhao only): the positives' terms softplus(L_i - a_ip) and their sigmoids, whose row sums
  weight the negatives' gradient; tiles of positives also add their gradient here;
* ``G``: the gradient matrix S of the tile, then dz_I += S z_J and dz_J += Sᵀ z_I.

Tiles are recomputed between passes (no N x N tensor), except for the first ``_CACHE_BYTES`` of
them, kept from pass A (their exponentials): at the default budget of 4,096 pixels every tile
fits, and pass G costs only its two gradient products. Under ``torch.no_grad`` pass G is skipped.
Matrix products: 2 N²D multiply-adds without the cache (the logits twice over half the matrix,
the gradient once), against 3 N²D for row blocks streamed over all columns.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# One tile holds at most this many entries (8 MiB in float32); a few are alive at once.
_TILE_ELEMENTS = 1 << 21
# Rows per block: large enough for efficient matrix products, small enough for many blocks.
_ROW_BLOCK = 1024
# Segments with fewer pixels are packed into mixed blocks (tiny pure blocks cost more in Python
# and in small matrix products than the masks of a mixed block).
_MIN_PURE = 128
# Tiles of pass A kept for the later passes, in bytes (all of them at N = 4,096).
_CACHE_BYTES = 40 << 20
# exp(-2/t) must stay a normal number of the tile's dtype (with margin): below these temperatures
# float32 tiles are computed in float64, and float64 ones are refused.
_MIN_TEMPERATURE = {torch.float32: 1 / 40, torch.float64: 1 / 350}

_POS, _NEG, _MIXED = 0, 1, 2


@dataclass(frozen=True)
class _Tile:
    rows: tuple[int, int]  # [start, stop) in sorted order
    cols: tuple[int, int]
    kind: int  # _POS, _NEG or _MIXED
    diagonal: bool  # rows == cols: only the row side counts, the diagonal entry is not a pair


@dataclass(frozen=True)
class Plan:
    """Pixel order and the tiles of the upper triangle for one batch.

    Attributes:
        order: Permutation that sorts the pixels, shape (N,): ``z[order]`` is the sorted batch.
        labels, pos_groups, neg_groups: Sorted ids, shape (N,) each (groups zero for ``batch``).
        anchor: Sorted anchor flags, shape (N,), bool.
        num_pos: |P(i)| of every sorted pixel, shape (N,), int64.
        tiles: The tiles to visit, in order.
    """

    order: Tensor
    labels: Tensor
    pos_groups: Tensor
    neg_groups: Tensor
    anchor: Tensor
    num_pos: Tensor
    tiles: tuple[_Tile, ...]


def lexsort(keys: list[Tensor]) -> Tensor:
    """Indices that sort by ``keys[0]``, then ``keys[1]``, ...; stable, (N,)."""
    order = torch.arange(keys[0].shape[0], device=keys[0].device)
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True).indices]
    return order


def plan_tiles(
    labels: Tensor,
    pos_groups: Tensor | None,
    neg_groups: Tensor | None,
    anchors: tuple[int, int],
    block_size: int | None = None,
) -> Plan:
    """Sort the pixels into segments and list the tiles of the upper triangle that hold pairs.

    Args:
        labels: Class ids, shape (N,), no ignored pixel left.
        pos_groups, neg_groups: Pair scopes from :func:`pixcon.losses.contrastive.pair_scopes`,
            shape (N,) or None. Equal negative scopes must imply equal positive scopes (true of
            every variant): blocks never straddle a positive scope.
        anchors: ``(start, stop)``: pixels ``start:stop`` are anchors.
        block_size: Rows per block, >= 1; None picks ``_ROW_BLOCK``.

    Returns:
        The :class:`Plan`.
    """
    n = labels.shape[0]
    block = _ROW_BLOCK if block_size is None else int(block_size)
    min_pure = min(block, _MIN_PURE)
    zeros = torch.zeros_like(labels)
    pg = zeros if pos_groups is None else pos_groups.to(labels.dtype)
    ng = zeros if neg_groups is None else neg_groups.to(labels.dtype)
    idx = torch.arange(n, device=labels.device)
    not_anchor = ((idx < anchors[0]) | (idx >= anchors[1])).long()  # (N,)
    order = lexsort([not_anchor, pg, ng, labels])  # (N,)
    keys = torch.stack([not_anchor[order], pg[order], ng[order], labels[order]], dim=1)  # (N, 4)
    _seg_keys, counts = torch.unique_consecutive(keys, dim=0, return_counts=True)  # (S, 4), (S,)
    seg_keys = [tuple(k) for k in _seg_keys.tolist()]
    seg_counts = counts.tolist()
    seg_starts = [0]
    for c in seg_counts:
        seg_starts.append(seg_starts[-1] + c)

    scope_of: dict[int, int] = {}
    for _na, p, q, _lab in seg_keys:
        if scope_of.setdefault(q, p) != p:
            raise ValueError("negative scopes must lie inside positive scopes (see pair_scopes)")

    # |P(i)|: every pixel of the same label and positive scope, anchor or not, but i itself.
    class_size: dict[tuple[int, int], int] = {}
    for (_na, p, _q, lab), c in zip(seg_keys, seg_counts, strict=True):
        class_size[(p, lab)] = class_size.get((p, lab), 0) + c
    seg_pos = [class_size[(k[1], k[3])] - 1 for k in seg_keys]
    num_pos = torch.repeat_interleave(torch.tensor(seg_pos, dtype=torch.long), counts.cpu())  # (N,)

    # Blocks: (start, stop, segment or -1 for a mixed block, positive scope, is an anchor block).
    blocks: list[tuple[int, int, int, int, bool]] = []
    mixed: list[int] = []  # segments of the open mixed block

    def close_mixed() -> None:
        if mixed:
            k = seg_keys[mixed[0]]
            blocks.append((seg_starts[mixed[0]], seg_starts[mixed[-1] + 1], -1, k[1], k[0] == 0))
            mixed.clear()

    for s, (key, c) in enumerate(zip(seg_keys, seg_counts, strict=True)):
        if c >= min_pure:
            close_mixed()
            parts = -(-c // block)
            bounds = [seg_starts[s] + (c * j) // parts for j in range(parts + 1)]
            blocks += [(a, b, s, key[1], key[0] == 0) for a, b in itertools.pairwise(bounds)]
            continue
        if mixed:
            first = seg_keys[mixed[0]]
            size = seg_starts[s] - seg_starts[mixed[0]]
            if first[0] != key[0] or first[1] != key[1] or size + c > block:
                close_mixed()
        mixed.append(s)
    close_mixed()

    def relation(a: int, b: int) -> int | None:
        """Kind of the tile between blocks a and b (same positive scope), None if it holds no pair."""
        sa, sb = blocks[a][2], blocks[b][2]
        if sa < 0 or sb < 0:
            return _MIXED
        ka, kb = seg_keys[sa], seg_keys[sb]
        if ka[3] == kb[3]:
            return _POS
        return _NEG if ka[2] == kb[2] else None

    tiles: list[_Tile] = []
    for a, (r0, r1, _seg, scope, is_anchor) in enumerate(blocks):
        rows = (r0, r1)
        if is_anchor:
            tiles.append(_Tile(rows, rows, _POS if blocks[a][2] >= 0 else _MIXED, True))
        max_cols = max(1, _TILE_ELEMENTS // (r1 - r0))
        run: list[int] = []  # [kind, start, stop] of the open column range
        for b in range(a + 1, len(blocks)):
            c0, c1, _s, scope_b, anchor_b = blocks[b]
            kind = relation(a, b) if scope_b == scope and (is_anchor or anchor_b) else None
            if run and (kind != run[0] or c0 != run[2]):
                tiles += _chunks(rows, run, max_cols)
                run = []
            if kind is not None:
                run = [kind, c0, c1] if not run else [kind, run[1], c1]
        if run:
            tiles += _chunks(rows, run, max_cols)

    return Plan(
        order=order,
        labels=labels[order],
        pos_groups=pg[order],
        neg_groups=ng[order],
        anchor=not_anchor[order] == 0,
        num_pos=num_pos.to(labels.device),
        tiles=tuple(tiles),
    )


def _chunks(rows: tuple[int, int], run: list[int], max_cols: int) -> list[_Tile]:
    kind, c0, c1 = run
    parts = -(-(c1 - c0) // max_cols)
    bounds = [c0 + ((c1 - c0) * j) // parts for j in range(parts + 1)]
    return [_Tile(rows, (a, b), kind, False) for a, b in itertools.pairwise(bounds)]


class _Masks:
    """Positive and negative masks of a mixed tile, (b, c) each."""

    def __init__(self, plan: Plan, tile: _Tile) -> None:
        r, c = slice(*tile.rows), slice(*tile.cols)
        same = plan.labels[r, None] == plan.labels[None, c]  # (b, c)
        self.pos = same & (plan.pos_groups[r, None] == plan.pos_groups[None, c])
        self.neg = ~same & (plan.neg_groups[r, None] == plan.neg_groups[None, c])
        if tile.diagonal:
            self.pos.fill_diagonal_(False)


class _Tiles:
    """The plan's tiles: shifted logits a_ij - 1/t, or their exponentials, the first ones cached.

    Pass A computes every tile it visits and keeps, while ``_CACHE_BYTES`` last, what the later
    passes need: exp(a_ij - 1/t) (masked) where they need only that, the logits where the
    positives' terms need them too (mixed tiles of zhao). Later passes take the cached tile or
    recompute it into one of three workspaces. Workspaces and cache are views of one buffer,
    allocated once per call: a fresh buffer per tile fragments the heap, and the resident set
    then grows well above the live memory from one call to the next.
    """

    def __init__(self, z: Tensor, temperature: float, tiles: tuple[_Tile, ...], zhao: bool) -> None:
        self.z = z  # (N, D) sorted, normalised
        self.scale = 1.0 / temperature
        self.shift = z.new_tensor(-1.0 / temperature)
        self.cache: dict[int, tuple[bool, Tensor]] = {}  # tile -> (holds exp, tensor)
        areas = [(t.rows[1] - t.rows[0]) * (t.cols[1] - t.cols[0]) for t in tiles]
        self.size = max(areas, default=0)
        wanted = sum(a for a, t in zip(areas, tiles, strict=True) if not (zhao and t.kind == _POS))
        cache = min(wanted, _CACHE_BYTES // z.element_size())
        self.arena = z.new_empty(3 * self.size + cache)  # (3 workspaces + cache,)
        self.used = 3 * self.size

    def view(self, i: int, tile: _Tile) -> Tensor:
        """Workspace ``i`` shaped as the tile, (b, c)."""
        b, c = tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0]
        return self.arena[i * self.size : i * self.size + b * c].view(b, c)

    def reserve(self, tile: _Tile) -> Tensor | None:
        """A cache slot shaped as the tile, (b, c), or None when the cache is full."""
        b, c = tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0]
        if self.used + b * c > self.arena.numel():
            return None
        self.used += b * c
        return self.arena[self.used - b * c : self.used].view(b, c)

    def compute(self, tile: _Tile, out: Tensor | None = None) -> Tensor:
        """Shifted logits of the tile, (b, c), into ``out`` (default: workspace 0)."""
        r, c = slice(*tile.rows), slice(*tile.cols)
        out = self.view(0, tile) if out is None else out
        # Rows of z on both sides: faster products than a (D, N) copy, and 1/t as alpha.
        return torch.addmm(self.shift, self.z[r], self.z[c].t(), alpha=self.scale, out=out)

    def keep(self, k: int, x: Tensor, is_exp: bool) -> None:
        self.cache[k] = (is_exp, x)

    def logits(self, k: int, tile: _Tile) -> Tensor:
        """Shifted logits (b, c), in workspace 0 unless cached; not to be modified."""
        hit = self.cache.get(k)
        return hit[1] if hit is not None and not hit[0] else self.compute(tile)

    def exp(self, k: int, tile: _Tile) -> tuple[Tensor, bool]:
        """exp(a_ij - 1/t) (b, c), and whether it is in workspace 0 (free to modify)."""
        hit = self.cache.get(k)
        if hit is None:
            return self.compute(tile).exp_(), True
        if hit[0]:
            return hit[1], False
        return torch.exp(hit[1], out=self.view(0, tile)), True


def _accumulate(acc: Tensor, rows: tuple[int, int], cols: tuple[int, int], m: Tensor, diagonal: bool) -> None:
    """acc[rows] += m.sum(1) and, off the diagonal, acc[cols] += m.sum(0)."""
    acc[rows[0] : rows[1]] += m.sum(1)
    if not diagonal:
        acc[cols[0] : cols[1]] += m.sum(0)


def _add_grad(grad: Tensor, z: Tensor, tile: _Tile, s: Tensor) -> None:
    """dz_I += S z_J and dz_J += Sᵀ z_I; on the diagonal dz_I += (S + Sᵀ) z_I."""
    r, c = slice(*tile.rows), slice(*tile.cols)
    if tile.diagonal:
        grad[r].addmm_(s + s.t(), z[r])
        return
    grad[r].addmm_(s, z[c])
    grad[c].addmm_(s.t(), z[r])


def _outer(u: Tensor, tile: _Tile, tiles: _Tiles, i: int = 1) -> Tensor:
    """u_i + u_j over the tile, (b, c), in workspace ``i``; only u_i on the diagonal, where the
    column side is the transpose of the same tile."""
    ur = u[tile.rows[0] : tile.rows[1], None]
    if tile.diagonal:
        return ur.expand(-1, tile.cols[1] - tile.cols[0])
    return torch.add(ur, u[None, tile.cols[0] : tile.cols[1]], out=tiles.view(i, tile))


def symmetric_contrast(
    z: Tensor, plan: Plan, temperature: float, form: str, need_grad: bool
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Sum of the anchors' losses, their count, and the gradient of the sum with respect to z.

    Args:
        z: L2-normalised embeddings in the plan's order, shape (N, D).
        plan: From :func:`plan_tiles`.
        temperature: t > 0.
        form: ``"zhao"`` or ``"supcon"``.
        need_grad: Compute the gradient (pass G).

    Returns:
        ``(total, count, grad)``: scalar sum of l_i over anchors with a positive, their number
        (int64), and d total / d z in the plan's order, shape (N, D), or None.
    """
    in_dtype = z.dtype
    if temperature < _MIN_TEMPERATURE[torch.float64]:
        raise ValueError(
            f"temperature must be >= {_MIN_TEMPERATURE[torch.float64]:.4f} for the exact blocked loss, "
            f"got {temperature}"
        )
    if in_dtype != torch.float64 and temperature < _MIN_TEMPERATURE[torch.float32]:
        z = z.double()  # exp(-2/t) would leave float32's normal range
    n = z.shape[0]
    dtype = z.dtype
    zhao = form == "zhao"
    tiles = _Tiles(z, temperature, plan.tiles, zhao)
    valid = plan.anchor & (plan.num_pos > 0)  # (N,) anchors that count
    inv_pos = torch.where(valid, 1.0 / plan.num_pos.clamp(min=1).to(dtype), 0.0)  # (N,)

    # Pass A: normalisers (zhao: negatives; supcon: positives and negatives).
    s = z.new_zeros(n)  # (N,) sum_j exp(a_ij - 1/t)
    pos_logits = z.new_zeros(n)  # (N,) supcon: sum over positives of a_ip - 1/t
    for k, tile in enumerate(plan.tiles):
        if zhao and tile.kind == _POS:
            continue
        slot = tiles.reserve(tile)
        kept = slot is not None
        t = tiles.compute(tile, slot)
        masks = _Masks(plan, tile) if tile.kind == _MIXED else None
        if not zhao:
            if masks is not None:
                _accumulate(pos_logits, tile.rows, tile.cols, torch.where(masks.pos, t, 0.0), tile.diagonal)
            elif tile.kind == _POS:
                _accumulate(pos_logits, tile.rows, tile.cols, t, tile.diagonal)
                if tile.diagonal:  # i itself is not its positive
                    pos_logits[tile.rows[0] : tile.rows[1]] -= t.diagonal()
        if zhao and masks is not None:
            if kept:
                tiles.keep(k, t, is_exp=False)  # passes W and G need the logits of the positives
            e = torch.where(masks.neg, torch.exp(t), 0.0)
        else:
            e = t.exp_()
            if masks is not None:
                e.masked_fill_(~(masks.neg | masks.pos), 0.0)
            elif tile.diagonal:
                e.fill_diagonal_(0.0)
            if kept:
                tiles.keep(k, e, is_exp=True)
        _accumulate(s, tile.rows, tile.cols, e, tile.diagonal)
    log_s = torch.log(s)  # (N,) L_i - 1/t; -inf without negatives (zhao)

    grad = z.new_zeros(z.shape) if need_grad else None
    if zhao:
        # Pass W: softplus(L_i - a_ip) and sigmoid(L_i - a_ip) over the positives; tiles of
        # positives only also add their gradient, which needs no weight.
        softplus_sum = z.new_zeros(n)
        sigmoid_sum = z.new_zeros(n)
        for k, tile in enumerate(plan.tiles):
            if tile.kind == _NEG:
                continue
            t = tiles.logits(k, tile)
            masks = _Masks(plan, tile) if tile.kind == _MIXED else None
            g = _positive_terms(t, log_s, inv_pos, tile, tiles, masks, softplus_sum, sigmoid_sum)
            if grad is not None and masks is None:
                _add_grad(grad, z, tile, g)
        loss = softplus_sum * inv_pos  # (N,)
        # d l_i / d a_in = exp(a_in - L_i) * sum_p sigmoid(L_i - a_ip) / |P(i)|
        neg_weight = torch.where(s > 0, sigmoid_sum * inv_pos / s, 0.0)  # (N,)
        if grad is not None:
            for k, tile in enumerate(plan.tiles):
                if tile.kind == _POS:
                    continue
                if tile.kind == _NEG:
                    e, owned = tiles.exp(k, tile)
                    weight = _outer(neg_weight, tile, tiles)
                    g = e.mul_(weight) if owned else torch.mul(e, weight, out=tiles.view(0, tile))
                    _add_grad(grad, z, tile, g)
                    continue
                t = tiles.logits(k, tile)  # a mixed tile
                masks = _Masks(plan, tile)
                g = torch.where(masks.neg, torch.exp(t) * _outer(neg_weight, tile, tiles), 0.0)
                x = torch.where(masks.pos, log_s[tile.rows[0] : tile.rows[1], None] - t, -math.inf)
                g -= torch.sigmoid(x) * inv_pos[tile.rows[0] : tile.rows[1], None]
                if not tile.diagonal:
                    xc = torch.where(masks.pos, log_s[None, tile.cols[0] : tile.cols[1]] - t, -math.inf)
                    g -= torch.sigmoid(xc) * inv_pos[None, tile.cols[0] : tile.cols[1]]
                _add_grad(grad, z, tile, g)
    else:
        # supcon: l_i = L_i - mean_p a_ip, the 1/t shifts cancel.
        loss = torch.where(valid, log_s - pos_logits * inv_pos, 0.0)
        if grad is not None:
            # d l_i / d a_ij = exp(a_ij - L_i) - [j in P(i)] / |P(i)|
            norm = torch.where(valid, 1.0 / s, 0.0)  # (N,)
            for k, tile in enumerate(plan.tiles):
                e, owned = tiles.exp(k, tile)
                weight = _outer(norm, tile, tiles)
                g = e.mul_(weight) if owned else torch.mul(e, weight, out=tiles.view(0, tile))
                if tile.kind == _MIXED:
                    masks = _Masks(plan, tile)
                    g = torch.where(masks.pos | masks.neg, g, 0.0)
                    g -= masks.pos * _outer(inv_pos, tile, tiles)
                elif tile.kind == _POS:
                    g -= _outer(inv_pos, tile, tiles)
                    if tile.diagonal:
                        g.fill_diagonal_(0.0)
                _add_grad(grad, z, tile, g)
    total = torch.where(valid, loss, 0.0).sum().to(in_dtype)
    count = valid.sum()
    if grad is not None:
        grad = grad.div_(temperature).to(in_dtype)
    return total, count, grad


def _positive_terms(
    t: Tensor,
    log_s: Tensor,
    inv_pos: Tensor,
    tile: _Tile,
    tiles: _Tiles,
    masks: _Masks | None,
    softplus_sum: Tensor,
    sigmoid_sum: Tensor,
) -> Tensor:
    """Add the tile's softplus(L_i - a_ip) and sigmoid(L_i - a_ip) to both sides' sums.

    Returns, in workspace 2, the tile's gradient matrix -sigmoid(L_i - a_ij) / |P(i)| (plus the
    column side's, off the diagonal), zero outside the positives.
    """
    r0, r1 = tile.rows
    c0, c1 = tile.cols
    g = tiles.view(2, tile)
    sides = [(log_s[r0:r1, None], (r0, r1), 1, inv_pos[r0:r1, None])]  # L_i - a_ij (shifts cancel)
    if not tile.diagonal:
        sides.append((log_s[None, c0:c1], (c0, c1), 0, inv_pos[None, c0:c1]))
    for k, (lse, (a, b), dim, inv) in enumerate(sides):
        x = torch.sub(lse, t, out=tiles.view(1, tile))
        if masks is not None:
            x.masked_fill_(~masks.pos, -math.inf)
        elif tile.diagonal:
            x.fill_diagonal_(-math.inf)
        softplus_sum[a:b] += F.softplus(x).sum(dim)
        x.sigmoid_()
        sigmoid_sum[a:b] += x.sum(dim)
        if k == 0:
            torch.mul(x, -inv, out=g)
        else:
            g.addcmul_(x, inv, value=-1.0)
    return g


class BlockedPixelContrast(torch.autograd.Function):
    """Sum of per-anchor losses over L2-normalised ``z`` and the number of anchors with a positive.

    The gradient is accumulated in the forward pass (:func:`symmetric_contrast`) and only the
    (N, D) gradient is saved for backward; under ``torch.no_grad`` it is skipped.
    """

    @staticmethod
    def forward(
        ctx: Any,  # torch.autograd.function.FunctionCtx, with attributes set here
        z: Tensor,
        plan: Plan,
        temperature: float,
        form: str,
    ) -> tuple[Tensor, Tensor]:
        zs = z[plan.order]  # (N, D) sorted
        total, count, grad_sorted = symmetric_contrast(
            zs, plan, temperature, form, need_grad=ctx.needs_input_grad[0]
        )
        del zs  # before the (N, D) unsorted gradient is allocated: a lower peak
        if grad_sorted is not None:
            grad = torch.empty_like(grad_sorted)
            grad[plan.order] = grad_sorted  # (N, D) back in the input order
            ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(count)
        return total, count

    @staticmethod
    def backward(ctx: Any, grad_total: Tensor, _grad_count: Tensor) -> tuple[Tensor | None, ...]:
        (grad,) = ctx.saved_tensors
        return grad * grad_total, None, None, None
