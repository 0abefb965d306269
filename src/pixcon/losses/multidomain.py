"""Contrastive regularisation across domains (Boutillon et al., MICCAI 2021, arXiv 2105.10310).

The paper trains one segmenter on several datasets (its "domains": MR images of ankles and of
shoulders, each with its own bones to segment) and adds a supervised contrastive regulariser that
"promotes intra-domain similarity and imposes inter-domain margins in embedded space". The
supervision is the **domain label**, not the class: the embedding of an image is pulled towards the
embeddings of the other images of its dataset and pushed away from those of the other datasets.
The contrasted representation is the encoder's bottleneck, one vector per image, passed through a
projection head and L2-normalised; the loss is the supervised contrastive loss of Khosla et al.
(NeurIPS 2020, L_out, Eq. 2), added to the segmentation loss with a weight λ. (The domain
supervision is stated in the abstract; the bottleneck placement and the L_out form are our reading
of the method section, to be checked against the paper's equation before quoting numbers.) For an
anchor i among the N embeddings of a step (all domains together), with a_ij = z_i · z_j / t::

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(a_ip) / sum_{a != i} exp(a_ia) ),
    P(i) = {p != i : domain_p = domain_i},

averaged over the anchors that have a positive.

How pixcon maps it (``form="supcon"`` of :func:`~pixcon.losses.contrastive.pixel_contrastive_loss`
with labels = domain ids is exactly this equation, so the exact blocked core is reused):

* **image level (the paper):** the domain regulariser's image head (bottleneck -> spatial mean ->
  shared MLP -> unit norm), labels = domain ids. ``DomainContrastiveLoss`` on (B_d, D) tensors.
* **pixel level (pixcon):** the shared pixel projection head on the decoder features, with a
  class-balanced pixel budget split equally between the domains. ``positives="domain"`` keeps the
  paper's supervision (every pixel of a domain is a positive of every other one);
  ``positives="domain_class"`` uses domain-aware class ids (domain, class), i.e. Zhao et al.'s
  label-based pixel contrast in which every pixel of another dataset is a negative, since the
  datasets' classes are disjoint. ``DomainContrastiveLoss`` on (B_d, D, h, w) tensors.

Embeddings of one step come from several single-domain forward passes (one per domain, each with
its own batch norm) and are contrasted together. Under DDP the negatives are those of the rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from pixcon.losses.contrastive import Form, check_hyperparameters, pixel_contrastive_loss
from pixcon.losses.dense import balanced_quotas, balanced_sample, downsample_labels

POSITIVES: tuple[str, ...] = ("domain", "domain_class")

# Combined ids domain * 2**31 + class stay exact in int64 for any int32 class id and need no
# device sync (no max() over the labels).
_CLASS_SPAN = 1 << 31
_DROPPED = -1  # id of ignored pixels in the combined space (class ids are >= 0)


def domain_class_ids(domains: Tensor, labels: Tensor, ignore_index: int | None = 255) -> Tensor:
    """One id per (domain, class) pair; pixels labelled ``ignore_index`` get -1.

    Args:
        domains: Domain index of every sample, shape (N,), integer, >= 0.
        labels: Class id in the sample's own domain, shape (N,), integer, >= 0 unless ignored.
        ignore_index: Label of pixels to drop, or ``None``.

    Returns:
        int64 ids, shape (N,): equal exactly when domain and class are equal; -1 where ignored.
    """
    if domains.shape != labels.shape or domains.dim() != 1:
        raise ValueError(
            f"domains and labels must both have shape (N,), got {tuple(domains.shape)} and {tuple(labels.shape)}"
        )
    ids = domains.long() * _CLASS_SPAN + labels.long()  # (N,)
    if ignore_index is not None:
        ids = torch.where(labels == ignore_index, torch.full_like(ids, _DROPPED), ids)
    return ids


def domain_contrastive_loss(
    z: Tensor,
    domains: Tensor,
    temperature: float = 0.1,
    form: Form = "supcon",
    *,
    labels: Tensor | None = None,
    ignore_index: int | None = 255,
    block_size: int | None = None,
) -> Tensor:
    """Boutillon et al.'s contrastive regulariser: positives share the anchor's domain.

    Args:
        z: Embeddings of all domains together, shape (N, D); L2-normalised here.
        domains: Domain index of every embedding, shape (N,), integer.
        temperature: t > 0.
        form: ``"supcon"`` (the paper: Khosla et al.'s L_out, every other sample in the
            denominator) or ``"zhao"`` (each positive against the anchor's negatives only).
        labels: Optional class ids in each domain's own label space, shape (N,). Given, the
            positives are the samples of the same domain *and* class (pixcon's class-aware
            pixel variant); samples labelled ``ignore_index`` are dropped. Not given, the
            domain is the only supervision (the paper) and nothing is dropped.
        ignore_index: See ``labels``.
        block_size: Anchors per tile of the exact blocked core.

    Returns:
        Scalar mean over the anchors that have a positive; 0 (graph kept) when none has one.
        With a single domain in the batch there are no negatives: the supcon form is then
        still defined (it pulls the domain together), the zhao form is 0.
    """
    if domains.shape != z.shape[:1]:
        raise ValueError(f"domains must have shape (N,) = ({z.shape[0]},), got {tuple(domains.shape)}")
    if domains.dtype.is_floating_point or domains.dtype == torch.bool:
        raise ValueError(f"domains must be an integer tensor, got {domains.dtype}")
    if labels is None:
        ids, drop = domains.long(), None
    else:
        ids, drop = domain_class_ids(domains, labels, ignore_index), _DROPPED
    return pixel_contrastive_loss(
        z, ids, temperature=temperature, form=form, ignore_index=drop, block_size=block_size
    )


class DomainContrastiveLoss(nn.Module):
    """The cross-domain regulariser on the outputs of several single-domain passes.

    ``forward(embeddings, masks=None, domains=None)`` takes one tensor per domain pass:

    * (B_k, D) image embeddings (the image head of :class:`pixcon.objectives.domains.DomainRegulariser`, the paper): all of them,
      labels = domain ids;
    * (B_k, D, h, w) pixel embeddings (the shared projection head, pixcon's mapping): a
      budget of ``max_pixels`` split equally between the passes (a pass with fewer pixels gives
      its rest to the others), class-balanced inside each pass when masks are given (ignored
      pixels never drawn); labels = domain ids, or (domain, class) ids with
      ``positives="domain_class"`` (needs masks).

    Args:
        temperature: t > 0.
        form: ``"supcon"`` (the paper) or ``"zhao"``.
        positives: ``"domain"`` (the paper) or ``"domain_class"`` (pixel level only).
        max_pixels: Pixel budget of the pixel-level path, >= 2.
        ignore_index: Mask value that is never sampled.
    """

    def __init__(
        self,
        temperature: float = 0.1,
        form: str = "supcon",
        positives: str = "domain",
        max_pixels: int = 4096,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        check_hyperparameters(temperature, form, max_pixels)
        if positives not in POSITIVES:
            raise ValueError(f"unknown positives {positives!r}; choose one of {sorted(POSITIVES)}")
        self.temperature, self.form, self.positives = temperature, form, positives
        self.max_pixels, self.ignore_index = max_pixels, ignore_index

    def sample(
        self,
        embeddings: Sequence[Tensor],
        masks: Sequence[Tensor] | None = None,
        domains: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Flatten and subsample the passes: z (M, D), domain ids (M,), class ids (M,) or None."""
        domains = self._domains(embeddings, domains)
        if masks is not None and len(masks) != len(embeddings):
            raise ValueError(f"got {len(embeddings)} embedding tensors but {len(masks)} masks")
        dims = {e.dim() for e in embeddings}
        if dims == {2}:
            if self.positives != "domain" or masks is not None:
                raise ValueError(
                    "image embeddings (B, D) are contrasted by domain only: no masks, positives='domain'"
                )
            z = torch.cat(list(embeddings))  # (M, D)
            ids = torch.cat(
                [
                    torch.full((len(e),), d, dtype=torch.long, device=e.device)
                    for e, d in zip(embeddings, domains, strict=True)
                ]
            )  # (M,)
            return z, ids, None
        if dims != {4}:
            raise ValueError(
                f"expected (B, D) image or (B, D, h, w) pixel embeddings for every pass, got dims {sorted(dims)}"
            )
        if self.positives == "domain_class" and masks is None:
            raise ValueError("positives='domain_class' needs the masks of every pass")
        flat_z, flat_y = [], []
        for k, e in enumerate(embeddings):
            b, d, h, w = e.shape
            flat_z.append(e.permute(0, 2, 3, 1).reshape(b * h * w, d))  # (B_k*h*w, D)
            if masks is None:
                flat_y.append(torch.zeros(b * h * w, dtype=torch.long, device=e.device))
            else:
                if masks[k].dim() != 3 or masks[k].shape[0] != b:
                    raise ValueError(
                        f"masks[{k}] must be (B, H, W) with B = {b}, got {tuple(masks[k].shape)}"
                    )
                flat_y.append(downsample_labels(masks[k], (h, w)).flatten())  # (B_k*h*w,)
        counts = torch.tensor([int((y != self.ignore_index).sum()) for y in flat_y], dtype=torch.long)
        quotas = balanced_quotas(counts, self.max_pixels)  # (K,) equal shares between the passes
        zs, ds, ys = [], [], []
        for z_k, y_k, dom, quota in zip(flat_z, flat_y, domains, quotas.tolist(), strict=True):
            idx = balanced_sample(y_k, int(quota), self.ignore_index, generator=generator)  # (M_k,)
            zs.append(z_k[idx])
            ys.append(y_k[idx])
            ds.append(torch.full((len(idx),), dom, dtype=torch.long, device=z_k.device))
        labels = torch.cat(ys) if self.positives == "domain_class" else None
        return torch.cat(zs), torch.cat(ds), labels

    def forward(
        self,
        embeddings: Sequence[Tensor],
        masks: Sequence[Tensor] | None = None,
        domains: Sequence[int] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """embeddings[k]: (B_k, D) or (B_k, D, h, w) of domain ``domains[k]`` (default k);
        masks[k]: (B_k, H, W) int64 labels of that domain (pixel level). Returns a scalar."""
        z, dom, labels = self.sample(embeddings, masks, domains, generator=generator)
        return domain_contrastive_loss(
            z,
            dom,
            temperature=self.temperature,
            form=cast(Form, self.form),  # checked in __init__
            labels=labels,
            ignore_index=self.ignore_index,
        )

    @staticmethod
    def _domains(embeddings: Sequence[Tensor], domains: Sequence[int] | None) -> list[int]:
        if not embeddings:
            raise ValueError("need the embeddings of at least one domain pass")
        if domains is None:
            return list(range(len(embeddings)))
        if len(domains) != len(embeddings):
            raise ValueError(f"got {len(embeddings)} embedding tensors but {len(domains)} domains")
        return [int(d) for d in domains]

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, form={self.form}, positives={self.positives}, "
            f"max_pixels={self.max_pixels}"
        )
