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

State: the bank (memory, fill, FIFO pointer, refresh count, prototypes and concentrations), the
refresh schedule and the generators of :class:`HCSCLoss` are its nn.Module extra state
(:meth:`HCSCLoss.get_extra_state`), so they travel in ``state_dict()`` -- as CPU tensors, ints,
lists and dicts, loadable with ``torch.load(..., weights_only=True)`` -- and a resumed run continues
with the bank and prototypes it stopped with.

DDP (an initialised process group of more than one rank), as the reference gathers the keys of all
ranks: every call each rank picks its ``bank_per_step`` embeddings, the picks are all-gathered (in
rank order; the ranks' counts may differ) and every rank pushes the same rows, so all ranks hold the
same bank, refresh at the same call and -- rank 0's k-means result is broadcast, as GPU k-means
need not be bitwise reproducible -- use the same prototypes. Which random draws agree across ranks:

* per-rank (the generator seeded with ``seed + rank``): the Bernoulli selections of the two terms
  and the pick of this rank's pushed embeddings -- they act on this rank's own pixels, and equal
  streams would draw the same positions on every rank;
* shared (a second generator, seeded identically on every rank): the subsample of the gathered
  rows when one call gathers more than the bank holds (``world_size * bank_per_step > bank_size``),
  which must keep the same rows everywhere; the k-means seeds (``seed`` + refresh count) agree too.

Checkpoints are written by rank 0: after a resume rank 0 continues its selection stream exactly,
the other ranks reseed theirs from (seed, rank, training calls) (as the training loop does with
the global RNG); the bank, schedule and shared generator are the same on every rank anyway.

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
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from pixcon.clustering import Hierarchy, hierarchical_kmeans
from pixcon.losses.contrastive import default_block_size
from pixcon.losses.dense import balanced_sample, downsample_labels
from pixcon.losses.distributed import _gather_sizes, gather_rows, is_distributed

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

STATE_VERSION = 1  # of HCSCLoss's extra state
_SHARED_SEED_OFFSET = 2**62  # the shared generator is seeded with seed + this (apart from the rank streams)
_RESUME_SEED_STRIDE = 1_000_003  # a resumed rank r != 0 reseeds with seed + r + this * calls


def _rank() -> int:
    """This process's rank in an initialised process group of more than one rank, else 0."""
    return dist.get_rank() if is_distributed() else 0


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

    The bank stores detached embeddings on the device of the first :meth:`add` (:meth:`to` moves
    it). :meth:`refresh` re-clusters the stored embeddings with
    :func:`pixcon.clustering.hierarchical_kmeans`; each refresh uses the next seed.
    :meth:`state` / :meth:`load_state` save and restore it (:class:`HCSCLoss` keeps it in its
    state dict).

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

    @property
    def device(self) -> torch.device | None:
        """Where the memory lives (None before the first :meth:`add` or :meth:`load_state`)."""
        return None if self.memory is None else self.memory.device

    def to(self, device: torch.device | str) -> PrototypeBank:
        """Move the memory and the prototypes to ``device`` (in place; returns self)."""
        device = torch.device(device)
        if self.memory is not None and self.memory.device != device:
            self.memory = self.memory.to(device)
        h = self.hierarchy
        if h is not None and h.centroids[0].device != device:
            self.hierarchy = Hierarchy(
                *(
                    [t.to(device) for t in ts]
                    for ts in (h.centroids, h.parents, h.assignments, h.concentration)
                )
            )
        return self

    def state(self) -> dict[str, Any]:
        """The bank as CPU tensors, ints, lists and dicts (safe for ``weights_only`` loading)."""
        state: dict[str, Any] = {
            "capacity": self.capacity,
            "num_prototypes": list(self.num_prototypes),
            "count": self.count,
            "pointer": self.pointer,
            "refreshes": self.refreshes,
        }
        if self.memory is not None:
            state["memory"] = self.memory.detach().cpu().clone()
        if self.hierarchy is not None:
            h = self.hierarchy
            state["hierarchy"] = {
                "centroids": [t.detach().cpu().clone() for t in h.centroids],
                "parents": [t.detach().cpu().clone() for t in h.parents],
                "assignments": [t.detach().cpu().clone() for t in h.assignments],
                "concentration": [t.detach().cpu().clone() for t in h.concentration],
            }
        return state

    def load_state(self, state: dict[str, Any], device: torch.device | str | None = None) -> None:
        """Restore :meth:`state`; tensors go to ``device`` (default: the current memory's, else CPU).

        Raises:
            ValueError: The state is of a bank with another capacity or other prototype counts.
        """
        capacity, ks = int(state["capacity"]), [int(k) for k in state["num_prototypes"]]
        if capacity != self.capacity or ks != self.num_prototypes:
            raise ValueError(
                f"the saved HCSC bank has capacity {capacity} and prototypes {ks}, this one "
                f"{self.capacity} and {self.num_prototypes} (hcsc.bank_size / hcsc.num_prototypes changed?)"
            )
        memory = state.get("memory")
        if memory is not None and tuple(memory.shape[:1]) != (capacity,):
            raise ValueError(
                f"the saved HCSC memory has shape {tuple(memory.shape)}, expected ({capacity}, D)"
            )
        target = torch.device(device) if device is not None else (self.device or torch.device("cpu"))
        self.count, self.pointer, self.refreshes = (
            int(state["count"]),
            int(state["pointer"]),
            int(state["refreshes"]),
        )
        self.memory = None if memory is None else memory.to(target, torch.float32).clone()
        h = state.get("hierarchy")
        self.hierarchy = (
            None
            if h is None
            else Hierarchy(
                *(
                    [t.to(target).clone() for t in h[key]]
                    for key in ("centroids", "parents", "assignments", "concentration")
                )
            )
        )

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

    The bank, the schedule and the generators are the module's extra state (see the module
    docstring for the state and for DDP, where the pushed embeddings of all ranks are gathered).

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
        max_pixels: Pixel budget per call (per rank under DDP).
        ignore_index: Label that is never sampled.
        seed: Seed of the k-means, of the selections and of the bank's subsampling (rank r's
            selection stream starts from ``seed + r``).
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
        self.seed = int(seed)
        # Per-rank stream (selections, the pick of the pushed embeddings): seed + rank, bound in
        # forward, when the rank is known; ``_stream_rank`` is the rank whose stream it holds.
        self.generator = torch.Generator().manual_seed(self.seed)
        self._stream_rank = 0
        # Draws that must agree across ranks (the subsample of gathered rows beyond the capacity).
        self.shared_generator = torch.Generator().manual_seed(self.seed + _SHARED_SEED_OFFSET)
        self.calls_since_refresh = 0
        self.calls = 0  # training calls (updating the bank) so far

    def _bind_generator(self) -> None:
        """Put :attr:`generator` on this rank's stream: seed + rank, or after a resume from
        another rank's state, seed + rank + stride * calls."""
        rank = _rank()
        if rank != self._stream_rank:
            self.generator.manual_seed(self.seed + rank + _RESUME_SEED_STRIDE * self.calls)
            self._stream_rank = rank

    def maybe_refresh(self) -> bool:
        """Re-cluster the bank if it is due (full, and never clustered or ``refresh_every`` calls ago).

        Under DDP every rank calls this at the same call (their banks are the same) and takes rank
        0's prototypes.
        """
        due = self.bank.full and (not self.bank.ready or self.calls_since_refresh >= self.refresh_every)
        if due:
            self.bank.refresh()
            if is_distributed():
                h = self.bank.hierarchy
                assert h is not None
                tensors = [
                    [t.contiguous() for t in ts]
                    for ts in (h.centroids, h.parents, h.assignments, h.concentration)
                ]
                for t in itertools.chain.from_iterable(tensors):
                    dist.broadcast(t, src=0)
                self.bank.hierarchy = Hierarchy(*tensors)
            self.calls_since_refresh = 0
        return due

    @torch.no_grad()
    def push(self, z: Tensor) -> int:
        """Push a random ``bank_per_step`` of ``z`` (N, D) into the bank; under DDP every rank's.

        Must be called on every rank at the same call under DDP (a collective). Returns the number
        of embeddings pushed (the same on every rank).
        """
        z = z.detach().float()
        pick = torch.empty(0, dtype=torch.long)
        if z.shape[0] > 0:
            pick = torch.randperm(z.shape[0], generator=self.generator)[: self.bank_per_step]
        new = z[pick.to(z.device)]  # (m, D)
        if is_distributed():
            sizes = _gather_sizes(new.shape[0], new.device)
            if max(sizes) == 0:
                return 0
            new = gather_rows(new, sizes, differentiable=False)  # (sum(sizes), D), rank order
            if new.shape[0] > self.bank.capacity:  # keep a random subset, the same on every rank
                keep = torch.randperm(new.shape[0], generator=self.shared_generator)[: self.bank.capacity]
                new = new[keep.sort().values.to(new.device)]
        if new.shape[0] == 0:
            return 0
        self.bank.add(new)
        self.calls_since_refresh += 1
        return new.shape[0]

    def get_extra_state(self) -> dict[str, Any]:
        """Bank, schedule and generators: CPU tensors, ints, lists and dicts (``weights_only``-safe)."""
        return {
            "version": STATE_VERSION,
            "bank": self.bank.state(),
            "calls_since_refresh": self.calls_since_refresh,
            "calls": self.calls,
            "generator": self.generator.get_state(),
            "generator_rank": self._stream_rank,
            "shared_generator": self.shared_generator.get_state(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`; the bank goes to its current device, else the CPU (it
        follows the embeddings to their device at the next call)."""
        version = int(state.get("version", 0))
        if version != STATE_VERSION:
            raise ValueError(f"HCSC state version {version} is not supported (expected {STATE_VERSION})")
        self.bank.load_state(state["bank"])
        self.calls_since_refresh, self.calls = int(state["calls_since_refresh"]), int(state["calls"])
        self.generator.set_state(state["generator"].cpu())
        self._stream_rank = int(state["generator_rank"])
        self.shared_generator.set_state(state["shared_generator"].cpu())

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        key = prefix + "_extra_state"
        if key in missing_keys:
            # A checkpoint from before the state was saved: start with an empty bank, as it did.
            missing_keys.remove(key)
            log.warning("no HCSC state (%s) in the state dict: the bank starts empty", key)

    def _memberships(self, z: Tensor, clusters: list[Tensor]) -> list[Tensor]:
        h = self.bank.hierarchy
        assert h is not None
        if self.selection == "hard":
            return [F.one_hot(c, k.shape[0]).to(z.dtype) for c, k in zip(clusters, h.centroids, strict=True)]
        phis: Sequence[Tensor | float] = (
            h.concentration if self.use_concentration else [self.temperature] * len(h.centroids)
        )
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
        self._bind_generator()
        self.bank.to(proj.device)  # a restored bank arrives on the CPU
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
        if updating:
            self.push(z)
            self.calls += 1
        return {"instance": instance, "proto": self.proto_weight * proto}

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, num_prototypes={self.bank.num_prototypes}, "
            f"bank_size={self.bank.capacity}, refresh_every={self.refresh_every}, selection={self.selection}"
        )
