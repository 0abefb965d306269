"""HCSC (Guo et al., "HCSC: Hierarchical Contrastive Selective Coding", CVPR 2022) for pixels.

HCSC has three parts, kept here with the image instances replaced by labeled pixels:

1. **Hierarchical prototypes** (Sec. 3.2): k-means on the embeddings, then k-means on the
   centroids, level after level (:func:`pixcon.clustering.hierarchical_kmeans`), refreshed every
   epoch. Here a :class:`PrototypeBank` keeps a FIFO memory of sampled pixel embeddings (detached),
   filled during the forward passes, and :class:`HCSCLoss` re-clusters it every ``refresh_every``
   steps (an "epoch" of pixels), so the objective needs no hook in the training loop.
2. **Instance-wise contrastive selective coding** (ICSC, Sec. 3.3): at every level l, a negative
   candidate j of anchor i is kept with probability

       p_sel(j | i, l) = 1 - softmax_k(z_j . c^l_k / phi^l_k)[a^l_i]

   (one minus the probability that j belongs to the anchor's prototype a^l_i; a Bernoulli draw in
   the paper), and the InfoNCE loss uses the selected negatives; the levels are averaged. With
   labels, positives are the anchor's same-class pixels and negatives its other-class pixels
   (Zhao et al.'s pixel form, :mod:`pixcon.losses.contrastive`); the selection then drops
   other-class pixels that sit in the anchor's cluster, at every level of the hierarchy.
3. **Prototypical contrastive selective coding** (PCSC, Sec. 3.3): ProtoNCE (PCL, Li et al. ICLR
   2021) of each pixel against its level-l prototype, with per-prototype temperatures phi (PCL's
   concentration); a negative prototype c^l_j is kept with probability
   1 - softmax_m(c^l_j . c^{l+1}_m / phi^{l+1}_m)[parent(a^l_i)] (it is unlikely to share the
   positive prototype's parent); the top level keeps every negative. The levels are averaged.
   The prototype is HCSC's "diverse positive with similar semantics": the pixel is pulled to its
   cluster's centre, which pixels of other images and classes share.

Selection modes: ``"sample"`` (the paper's Bernoulli draw), ``"expected"`` (negatives weighted by
p_sel in the denominator: the expectation of the sampled denominator, deterministic), ``"hard"``
(the zero-temperature limit: drop exactly the negatives assigned to the anchor's prototype, resp.
the negative prototypes with the same parent) and ``"none"``.

Differences from the reference implementation (github.com/hirl-team/HCSC), stated where they
matter: unselected negatives are removed from the denominator (the reference multiplies their
logits by 0, which leaves exp(0) = 1 in the denominator); the per-level instance terms are
averaged (the reference sums them); a pixel's prototype is its nearest level-0 prototype and then
its ancestors (the reference looks up the image's cluster from the last clustering).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pixcon.clustering import Hierarchy, hierarchical_kmeans
from pixcon.losses.contrastive import default_block_size
from pixcon.losses.dense import balanced_sample, downsample_labels

__all__ = [
    "SELECTIONS",
    "HCSCLoss",
    "PrototypeBank",
    "keep_probability",
    "membership",
    "prototype_contrastive_loss",
    "select",
    "selective_pixel_contrastive_loss",
]

log = logging.getLogger(__name__)

SELECTIONS: tuple[str, ...] = ("sample", "expected", "hard", "none")


def _at_least_float32(z: Tensor) -> Tensor:
    """Half-precision inputs (mixed precision) are compared in float32; float64 stays float64."""
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def membership(z: Tensor, prototypes: Tensor, temperature: float | Tensor) -> Tensor:
    """Soft assignment of points to prototypes, softmax_k(z_j . c_k / phi_k) (HCSC Sec. 3.3).

    Args:
        z: Points, shape (M, D); L2-normalised here.
        prototypes: (K, D), unit vectors.
        temperature: A scalar > 0, or per-prototype phi of shape (K,).

    Returns:
        (M, K), rows sum to 1. No gradient (the selection is not differentiated).
    """
    with torch.no_grad():
        logits = F.normalize(z, dim=1) @ prototypes.t()  # (M, K)
        return (logits / temperature).softmax(dim=1)


def keep_probability(member: Tensor, clusters: Tensor) -> Tensor:
    """HCSC's selection probability 1 - P(candidate j belongs to anchor i's cluster).

    Args:
        member: Candidates' memberships, shape (M, K) (:func:`membership`, or one-hot
            assignments for the hard selection).
        clusters: The cluster of each anchor, shape (N,) int64 in [0, K).

    Returns:
        (N, M) keep probabilities in [0, 1].
    """
    return 1.0 - member[:, clusters].t()


def select(keep: Tensor, selection: str, generator: torch.Generator | None = None) -> Tensor:
    """Turn keep probabilities into negative weights: a Bernoulli draw (``"sample"``) or themselves.

    Args:
        keep: Probabilities in [0, 1], any shape.
        selection: One of :data:`SELECTIONS`; ``"none"`` keeps everything.
        generator: RNG of the draw (on ``keep``'s device); None uses the global one.

    Returns:
        Weights of ``keep``'s shape: {0, 1} for ``"sample"``, ``keep`` for ``"expected"``/``"hard"``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {sorted(SELECTIONS)}")
    if selection == "none":
        return torch.ones_like(keep)
    if selection == "sample":
        device = keep.device if generator is None else generator.device
        u = torch.rand(keep.shape, generator=generator, device=device, dtype=keep.dtype).to(keep.device)
        return (u < keep).to(keep.dtype)
    return keep


def _selective_rows(
    z: Tensor,
    labels: Tensor,
    member: Tensor | None,
    clusters: Tensor | None,
    temperature: float,
    sample_seed: int | None,
    start: int,
    stop: int,
) -> tuple[Tensor, Tensor]:
    """Sum of the per-anchor losses of anchors ``start:stop`` and how many have a positive."""
    n = labels.shape[0]
    rows = slice(start, stop)
    logits = z[rows] @ z.t() / temperature  # (b, N)
    same = labels[rows, None] == labels[None, :]  # (b, N)
    not_self = torch.arange(start, stop, device=z.device)[:, None] != torch.arange(n, device=z.device)
    pos, neg = same & not_self, ~same
    neg_logits = logits
    if member is not None and clusters is not None:
        keep = keep_probability(member, clusters[rows]).to(logits.dtype)  # (b, N)
        if sample_seed is not None:
            # Seeded per block: the recomputation under checkpointing draws the same selection.
            gen = torch.Generator(device=z.device).manual_seed(sample_seed + start)
            keep = select(keep, "sample", gen)
        neg = neg & (keep > 0)
        neg_logits = logits + torch.log(keep.clamp_min(torch.finfo(keep.dtype).tiny))  # weights in log space
    # A finite fill instead of -inf: an empty negative set then contributes exp(-huge) = 0 and no NaN.
    fill = torch.finfo(logits.dtype).min
    log_neg = torch.logsumexp(neg_logits.masked_fill(~neg, fill), dim=1)  # (b,)
    # -log(e^a_ip / (e^a_ip + sum_n w_in e^a_in)) = softplus(log sum_n w_in e^a_in - a_ip)
    per_pair = F.softplus(log_neg[:, None] - logits)  # (b, N)
    num_pos = pos.sum(dim=1)  # (b,)
    loss = torch.where(pos, per_pair, 0.0).sum(dim=1) / num_pos.clamp(min=1)  # (b,)
    return loss.sum(), (num_pos > 0).sum()


def selective_pixel_contrastive_loss(
    z: Tensor,
    labels: Tensor,
    member: Sequence[Tensor] = (),
    clusters: Sequence[Tensor] = (),
    temperature: float = 0.2,
    selection: str = "expected",
    ignore_index: int | None = 255,
    *,
    generator: torch.Generator | None = None,
    block_size: int | None = None,
) -> Tensor:
    """HCSC's instance-wise selective coding on labeled pixels, averaged over the levels.

    For each level l (HCSC Sec. 3.3, with Zhao et al.'s pixel form, ICCV 2021 Eq. 1)::

        l_i = 1/|P(i)| sum_{p in P(i)} -log( e^{a_ip} / (e^{a_ip} + sum_{n in N(i)} w^l_in e^{a_in}) )

    with a_ij = cos(z_i, z_j) / t, P(i) the other pixels of i's class, N(i) the pixels of other
    classes and w^l_in the selection of negative n for anchor i at level l: a Bernoulli draw of
    ``keep_probability(member[l], clusters[l])`` (``"sample"``) or that probability itself
    (``"expected"``, ``"hard"``). Anchors without a positive are skipped; the mean over anchors is
    averaged over the levels. Without levels (no prototypes yet) it is the plain pixel loss.

    Memory: anchors are processed in row blocks recomputed in backward (checkpointing), so the
    peak is O(N * block_size), as for :func:`pixcon.losses.contrastive.pixel_contrastive_loss`.

    Args:
        z: Pixel embeddings, shape (N, D); L2-normalised here.
        labels: Integer class ids, shape (N,); ``ignore_index`` pixels are dropped.
        member: Per level, every pixel's membership in the level's prototypes, shape (N, K_l)
            (:func:`membership`; one-hot assignments for the hard selection).
        clusters: Per level, every pixel's prototype, shape (N,) int64.
        temperature: t > 0.
        selection: ``"sample"``, ``"expected"``, ``"hard"`` or ``"none"`` (see module docstring).
        ignore_index: Label to drop, or None.
        generator: CPU generator of the sampled selection's seeds; None uses the global RNG.
        block_size: Anchors per block; None picks the default of the pixel loss.

    Returns:
        Scalar loss (0 with the graph kept when no anchor has a positive).
    """
    if z.dim() != 2 or labels.shape != z.shape[:1]:
        raise ValueError(f"expected z (N, D) and labels (N,), got {tuple(z.shape)} and {tuple(labels.shape)}")
    if len(member) != len(clusters):
        raise ValueError(
            f"member and clusters need one entry per level, got {len(member)} and {len(clusters)}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if selection not in SELECTIONS:
        raise ValueError(f"unknown selection {selection!r}; choose one of {sorted(SELECTIONS)}")
    z_all = z
    member, clusters = list(member), list(clusters)
    if ignore_index is not None:
        keep = labels != ignore_index
        if not bool(keep.all()):
            z, labels = z[keep], labels[keep]  # (N', D), (N',)
            member, clusters = [m[keep] for m in member], [c[keep] for c in clusters]
    n = z.shape[0]
    if n < 2:
        return z_all.sum() * 0.0
    z = F.normalize(_at_least_float32(z), dim=1)
    block = default_block_size(n) if block_size is None else int(block_size)
    use_levels: list[tuple[Tensor | None, Tensor | None]] = (
        list(zip(member, clusters, strict=True)) if member and selection != "none" else [(None, None)]
    )
    grad = torch.is_grad_enabled() and z.requires_grad
    total = z.new_zeros(())
    for level, (m, c) in enumerate(use_levels):
        seed = None
        if selection == "sample" and m is not None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator)) + level
        level_sum, level_count = z.new_zeros(()), torch.zeros((), dtype=torch.long, device=z.device)
        for start in range(0, n, block):
            args = (z, labels, m, c, float(temperature), seed, start, min(start + block, n))
            s, k = checkpoint(_selective_rows, *args, use_reentrant=False) if grad else _selective_rows(*args)
            level_sum, level_count = level_sum + s, level_count + k
        total = total + level_sum / level_count.clamp(min=1)
    return total / len(use_levels)


def prototype_contrastive_loss(
    z: Tensor,
    clusters: Tensor,
    prototypes: Tensor,
    temperature: float | Tensor = 0.2,
    keep: Tensor | None = None,
) -> Tensor:
    """ProtoNCE of one level with selected negative prototypes (PCL Eq. 11; HCSC's PCSC)::

        l_i = -log( e^{z_i.c_a/phi_a} / (e^{z_i.c_a/phi_a} + sum_{j != a} w_ij e^{z_i.c_j/phi_j}) ),  a = clusters[i]

    Args:
        z: Pixel embeddings, shape (N, D); L2-normalised here.
        clusters: Each pixel's prototype, shape (N,) int64 in [0, K).
        prototypes: (K, D), unit vectors (constants: no gradient flows into them).
        temperature: Scalar > 0 or per-prototype concentration phi, shape (K,).
        keep: Weights w of the negative prototypes, shape (N, K) in [0, 1] (a selection mask or
            probabilities); the positive column is ignored. None keeps every negative.

    Returns:
        Scalar mean over pixels.
    """
    if z.dim() != 2 or clusters.shape != z.shape[:1] or prototypes.dim() != 2:
        raise ValueError(
            f"expected z (N, D), clusters (N,), prototypes (K, D); got {tuple(z.shape)}, "
            f"{tuple(clusters.shape)}, {tuple(prototypes.shape)}"
        )
    if z.shape[0] == 0:
        return z.sum() * 0.0
    z = F.normalize(z, dim=1)
    protos = prototypes.detach().to(z.dtype)
    phi = temperature.detach().to(z.dtype) if isinstance(temperature, Tensor) else float(temperature)
    logits = z @ protos.t() / phi  # (N, K)
    positive = logits.gather(1, clusters[:, None])[:, 0]  # (N,)
    neg = torch.ones_like(logits, dtype=torch.bool).scatter_(1, clusters[:, None], False)  # (N, K)
    neg_logits = logits
    if keep is not None:
        keep = keep.detach().to(logits.dtype)
        neg = neg & (keep > 0)
        neg_logits = logits + torch.log(keep.clamp_min(torch.finfo(keep.dtype).tiny))
    log_neg = torch.logsumexp(neg_logits.masked_fill(~neg, torch.finfo(logits.dtype).min), dim=1)  # (N,)
    return F.softplus(log_neg - positive).mean()


class PrototypeBank:
    """A FIFO memory of pixel embeddings and HCSC's hierarchical prototypes clustered from it.

    The bank stores detached embeddings on the device of the first :meth:`add` (it is not part of
    any state dict: after a resume it refills). :meth:`refresh` re-clusters the stored embeddings
    with :func:`pixcon.clustering.hierarchical_kmeans`; each refresh uses the next seed.

    Args:
        capacity: Embeddings kept, >= ``num_prototypes[0]``.
        num_prototypes: Prototypes per level, finest first, non-increasing (HCSC: 3000, 2000, 1000
            on ImageNet).
        iters: Lloyd iterations per level (PCL/HCSC: 20).
        temperature: Mean of the per-prototype concentration phi.
        seed: Seed of the first refresh.
    """

    def __init__(
        self,
        capacity: int,
        num_prototypes: Sequence[int] = (64, 16, 4),
        iters: int = 20,
        temperature: float = 0.2,
        seed: int = 0,
    ) -> None:
        ks = [int(k) for k in num_prototypes]
        if not ks or ks[-1] < 1 or any(b > a for a, b in itertools.pairwise(ks)):
            raise ValueError(
                f"num_prototypes must be non-increasing positive sizes, got {list(num_prototypes)}"
            )
        if capacity < ks[0]:
            raise ValueError(f"capacity ({capacity}) must be >= the finest level's prototypes ({ks[0]})")
        self.capacity, self.num_prototypes, self.iters = int(capacity), ks, int(iters)
        self.temperature, self.seed = float(temperature), int(seed)
        self.memory: Tensor | None = None  # (capacity, D)
        self.count = 0  # valid rows
        self.pointer = 0  # next row to overwrite
        self.refreshes = 0
        self.hierarchy: Hierarchy | None = None

    @property
    def full(self) -> bool:
        return self.count >= self.capacity

    @property
    def ready(self) -> bool:
        """Whether prototypes exist (after the first :meth:`refresh`)."""
        return self.hierarchy is not None

    @torch.no_grad()
    def add(self, z: Tensor) -> None:
        """Store embeddings (M, D), overwriting the oldest ones once full."""
        z = F.normalize(z.detach().float(), dim=1)
        if self.memory is None:
            self.memory = torch.zeros(self.capacity, z.shape[1], device=z.device)
        z = z[-self.capacity :].to(self.memory.device)
        m = z.shape[0]
        idx = (self.pointer + torch.arange(m, device=self.memory.device)) % self.capacity
        self.memory[idx] = z
        self.pointer = (self.pointer + m) % self.capacity
        self.count = min(self.capacity, self.count + m)

    @torch.no_grad()
    def refresh(self) -> Hierarchy:
        """Re-cluster the stored embeddings into the hierarchy of prototypes."""
        if self.memory is None or self.count < self.num_prototypes[0]:
            raise RuntimeError(
                f"the bank holds {self.count} embeddings, fewer than {self.num_prototypes[0]} prototypes"
            )
        self.hierarchy = hierarchical_kmeans(
            self.memory[: self.count],
            self.num_prototypes,
            iters=self.iters,
            spherical=True,
            seed=self.seed + len(self.num_prototypes) * self.refreshes,
            temperature=self.temperature,
        )
        self.refreshes += 1
        log.debug("HCSC prototypes refreshed (%d) from %d embeddings", self.refreshes, self.count)
        return self.hierarchy

    @torch.no_grad()
    def assign(self, z: Tensor) -> list[Tensor]:
        """Each embedding's prototype per level: the nearest level-0 prototype, then its ancestors.

        Args:
            z: (N, D).

        Returns:
            Per level, (N,) int64.
        """
        if self.hierarchy is None:
            raise RuntimeError("no prototypes yet: call refresh() first")
        h = self.hierarchy
        zf = F.normalize(_at_least_float32(z), dim=1)
        out = [(zf @ h.centroids[0].to(zf).t()).argmax(dim=1)]  # (N,)
        for parents in h.parents:
            out.append(parents.to(z.device)[out[-1]])
        return out


class HCSCLoss(nn.Module):
    """HCSC on dense projections: selective pixel contrast + hierarchical ProtoNCE.

    Each call samples a class-balanced pixel budget (as :class:`PixelContrastiveLoss`), refreshes
    the prototypes when due, computes the two terms and, in training mode with gradients enabled,
    pushes a random subset of the sampled embeddings into the bank. The first refresh happens once
    the bank is full; until then the instance term is the plain pixel loss and the prototype term
    is 0. Then the bank is re-clustered every ``refresh_every`` calls.

    Args:
        temperature: t of both terms and mean of the concentrations (HCSC: 0.2).
        num_prototypes: Prototypes per level, finest first (HCSC: 3000, 2000, 1000 on ImageNet).
        bank_size: Embeddings the bank keeps (HCSC clusters the whole dataset).
        bank_per_step: Embeddings pushed per call.
        refresh_every: Calls between re-clusterings (HCSC: one epoch).
        kmeans_iters: Lloyd iterations per level (HCSC: 20).
        selection: Instance and prototype selection, one of :data:`SELECTIONS` (HCSC: sample).
        proto_selection: Select negative prototypes by their parents (HCSC: on).
        use_concentration: Per-prototype temperatures phi (PCL/HCSC: on); off uses ``temperature``.
        proto_weight: Weight of the prototype term (HCSC: 1).
        max_pixels: Pixel budget per call.
        ignore_index: Label that is never sampled.
        seed: Seed of the k-means and of the bank's subsampling.
    """

    def __init__(
        self,
        temperature: float = 0.2,
        num_prototypes: Sequence[int] = (64, 16, 4),
        bank_size: int = 8192,
        bank_per_step: int = 512,
        refresh_every: int = 100,
        kmeans_iters: int = 20,
        selection: str = "sample",
        proto_selection: bool = True,
        use_concentration: bool = True,
        proto_weight: float = 1.0,
        max_pixels: int = 4096,
        ignore_index: int = 255,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if selection not in SELECTIONS:
            raise ValueError(f"unknown selection {selection!r}; choose one of {sorted(SELECTIONS)}")
        if bank_per_step < 1 or refresh_every < 1 or kmeans_iters < 1:
            raise ValueError("bank_per_step, refresh_every and kmeans_iters must be >= 1")
        if max_pixels < 2:
            raise ValueError(f"max_pixels must be >= 2, got {max_pixels}")
        if proto_weight < 0:
            raise ValueError(f"proto_weight must be >= 0, got {proto_weight}")
        self.bank = PrototypeBank(bank_size, num_prototypes, kmeans_iters, temperature, seed)
        self.temperature, self.selection = float(temperature), selection
        self.bank_per_step, self.refresh_every = int(bank_per_step), int(refresh_every)
        self.proto_selection, self.use_concentration = bool(proto_selection), bool(use_concentration)
        self.proto_weight, self.max_pixels, self.ignore_index = (
            float(proto_weight),
            int(max_pixels),
            ignore_index,
        )
        self.generator = torch.Generator().manual_seed(int(seed))
        self.calls_since_refresh = 0

    def maybe_refresh(self) -> bool:
        """Re-cluster the bank if it is due (full, and never clustered or ``refresh_every`` calls ago)."""
        due = self.bank.full and (not self.bank.ready or self.calls_since_refresh >= self.refresh_every)
        if due:
            self.bank.refresh()
            self.calls_since_refresh = 0
        return due

    def _memberships(self, z: Tensor, clusters: list[Tensor]) -> list[Tensor]:
        h = self.bank.hierarchy
        assert h is not None
        if self.selection == "hard":
            return [F.one_hot(c, k.shape[0]).to(z.dtype) for c, k in zip(clusters, h.centroids, strict=True)]
        phis = h.concentration if self.use_concentration else [self.temperature] * len(h.centroids)
        return [
            membership(z, c.to(z), p.to(z) if isinstance(p, Tensor) else p)
            for c, p in zip(h.centroids, phis, strict=True)
        ]

    def _proto_term(self, z: Tensor, clusters: list[Tensor]) -> Tensor:
        h = self.bank.hierarchy
        assert h is not None
        terms = []
        for level, (centroids, phi) in enumerate(zip(h.centroids, h.concentration, strict=True)):
            temp = phi.to(z) if self.use_concentration else self.temperature
            keep = None
            if self.proto_selection and self.selection != "none" and level < len(h.parents):
                parents = h.parents[level].to(z.device)
                up, up_phi = h.centroids[level + 1].to(z), h.concentration[level + 1].to(z)
                if self.selection == "hard":
                    parent_member = F.one_hot(parents, up.shape[0]).to(z.dtype)  # (K_l, K_{l+1})
                else:
                    parent_member = membership(
                        centroids.to(z), up, up_phi if self.use_concentration else self.temperature
                    )
                keep = keep_probability(parent_member, parents[clusters[level]])  # (N, K_l)
                if self.selection == "sample":
                    keep = select(keep, "sample", self.generator)
            terms.append(prototype_contrastive_loss(z, clusters[level], centroids.to(z), temp, keep))
        return torch.stack(terms).mean()

    def forward(self, proj: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """proj: (B, D, h, w) projection-head output; masks: (B, H, W) int64 labels.

        Returns:
            ``{"instance": ICSC term, "proto": proto_weight * PCSC term}``, scalars.
        """
        if proj.dim() != 4 or masks.dim() != 3 or proj.shape[0] != masks.shape[0]:
            raise ValueError(
                f"expected proj (B, D, h, w) and masks (B, H, W), got {tuple(proj.shape)} and {tuple(masks.shape)}"
            )
        b, d, h, w = proj.shape
        labels = downsample_labels(masks, (h, w)).flatten()  # (B*h*w,)
        idx = balanced_sample(labels, self.max_pixels, self.ignore_index)  # (N,)
        z = proj.permute(0, 2, 3, 1).reshape(b * h * w, d)[idx]  # (N, D)
        y = labels[idx]  # (N,)
        updating = self.training and torch.is_grad_enabled()  # evaluation passes leave the bank alone
        if updating:
            self.maybe_refresh()
        if self.bank.ready:
            clusters = self.bank.assign(z.detach())
            member = (
                self._memberships(_at_least_float32(z.detach()), clusters) if self.selection != "none" else []
            )
            instance = selective_pixel_contrastive_loss(
                z,
                y,
                member,
                clusters[: len(member)],
                self.temperature,
                self.selection,
                self.ignore_index,
                generator=self.generator,
            )
            proto = (
                self._proto_term(_at_least_float32(z), clusters) if self.proto_weight > 0 else z.sum() * 0.0
            )
        else:
            instance = selective_pixel_contrastive_loss(z, y, temperature=self.temperature, ignore_index=None)
            proto = z.sum() * 0.0
        if updating and z.shape[0] > 0:
            pick = torch.randperm(z.shape[0], generator=self.generator)[: self.bank_per_step].to(z.device)
            self.bank.add(z.detach()[pick])
            self.calls_since_refresh += 1
        return {"instance": instance, "proto": self.proto_weight * proto}

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, num_prototypes={self.bank.num_prototypes}, "
            f"bank_size={self.bank.capacity}, refresh_every={self.refresh_every}, selection={self.selection}"
        )
