"""Multi-domain training (Boutillon et al., MICCAI 2021, arXiv 2105.10310) as an objective.

One network learns several datasets ("domains") at once: shared convolutions, per-domain batch
norm and per-domain segmentation heads (:class:`~pixcon.models.multidomain.MultiDomainSegmenter`),
and a supervised contrastive regulariser whose labels are the domains
(:class:`~pixcon.losses.multidomain.DomainContrastiveLoss`). Every optimizer step sees one
batch of every domain, each through its own BN copies and head::

    L = sum_d CE_d(head_d(f_d(x_d)), y_d) + lambda * L_con({z_d}_d, domain ids)

with ``CE_d`` the cross-entropy of domain d over its own classes and ignore index (and its own
inverse-frequency weights with ``loss.class_weights: balanced``), and ``L_con`` Khosla et al.'s
L_out over the embeddings of all domains of the step. The batch is a sequence with one
``(images (B_d, C, H_d, W_d), masks (B_d, H_d, W_d))`` pair per domain, in the order of
:func:`pixcon.config.resolve_domains` (the primary first); the loop builds it.

Hyper-parameters (``multidomain`` config section):

============================  ===============  =====================================================
key                           default          meaning (paper value)
============================  ===============  =====================================================
weight                        0.1              lambda (pixcon's choice, as ``loss.joint_weight``;
                                               the paper's value was not available here)
temperature                   0.1              t of L_con (pixcon's pixel-loss default)
form                          "supcon"         supcon: L_out of Khosla et al. (the paper's reading)
level                         "image"          image: bottleneck -> mean -> MLP -> unit norm, one
                                               vector per image (the paper); pixel: the shared
                                               pixel projection head (pixcon)
positives                     "domain"         domain (the paper) | domain_class (pixel level)
max_pixels                    4096             pixel level: budget, equal shares per domain
image_proj_dim                128              image level: output of the image MLP (pixcon)
shared_affine                 false            per-domain BN affine (the paper); true: statistics
                                               only
============================  ===============  =====================================================

Terms logged: ``ce_<domain name>`` per domain, and ``domain`` (already multiplied by lambda).
With ``weight: 0`` the regulariser is off and no embedding head is trained (both stay frozen).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from pixcon.losses.multidomain import DomainContrastiveLoss
from pixcon.objectives.base import DataInfo, Objective, config_option, register_objective


def _knob(cfg: Any, key: str) -> Any:
    """``cfg.multidomain.<key>``, or the section's default where ``cfg`` lacks it."""
    return config_option(cfg, "multidomain", key)


class MultiDomain(Objective):
    """Per-domain CE on each domain's own head + lambda * the cross-domain regulariser.

    Args:
        infos: One :class:`DataInfo` per domain (classes, ignore index, CE weights).
        names: One name per domain (the terms are ``ce_<name>``).
        weight: lambda >= 0; 0 turns the regulariser off.
        regulariser: The cross-domain loss (None when ``weight`` is 0).
        level: ``"image"`` (the paper) or ``"pixel"``.
    """

    name = "multidomain"
    uses_segmentation_head = True
    uses_projection_head = False  # the pixel projection head; True at the pixel level (per instance)
    uses_image_head = False  # MultiDomainSegmenter.image_projection; True at the image level

    def __init__(
        self,
        infos: Sequence[DataInfo],
        names: Sequence[str],
        weight: float,
        regulariser: DomainContrastiveLoss | None,
        level: str = "image",
    ) -> None:
        super().__init__()
        if len(infos) != len(names) or not infos:
            raise ValueError(f"need one name per domain, got {len(infos)} infos and {len(names)} names")
        if level not in ("image", "pixel"):
            raise ValueError(f"level must be 'image' or 'pixel', got {level!r}")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if weight > 0 and regulariser is None:
            raise ValueError("weight > 0 needs a regulariser")
        self.names, self.level, self.weight = list(names), level, float(weight)
        self.ignore_index = [i.ignore_index for i in infos]
        self.regulariser = regulariser if weight > 0 else None
        self.uses_projection_head = self.regulariser is not None and level == "pixel"
        self.uses_image_head = self.regulariser is not None and level == "image"
        for d, info in enumerate(infos):
            self.register_buffer(f"class_weight_{d}", info.class_weights, persistent=False)

    def forward(self, model: nn.Module, batch: Sequence[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
        if len(batch) != len(self.names):
            raise ValueError(
                f"expected one (images, masks) batch per domain ({len(self.names)}), got {len(batch)}"
            )
        terms: dict[str, Tensor] = {}
        embeddings: list[Tensor] = []
        masks: list[Tensor] = []
        for d, (images, target) in enumerate(batch):  # (B_d, C, H, W), (B_d, H, W)
            if self.uses_image_head:
                logits, emb = model.forward_with_image(images, domain=d)  # (B_d, K_d, H, W), (B_d, D_img)
                embeddings.append(emb)
            elif self.uses_projection_head:
                logits, emb = model.forward_both(images, domain=d)  # (B_d, K_d, H, W), (B_d, D, h, w)
                embeddings.append(emb)
            else:
                logits = model(images, domain=d)  # (B_d, K_d, H, W)
            masks.append(target)
            terms[f"ce_{self.names[d]}"] = F.cross_entropy(
                logits.float(),
                target,
                weight=getattr(self, f"class_weight_{d}"),
                ignore_index=self.ignore_index[d],
            )
        if self.regulariser is not None:
            if self.level == "pixel":
                # Each domain has its own ignore value: map them all to the regulariser's, which
                # no class id can take (-1).
                masks = [
                    m.masked_fill(m == ignore, self.regulariser.ignore_index)
                    for m, ignore in zip(masks, self.ignore_index, strict=True)
                ]
                reg = self.regulariser([e.float() for e in embeddings], masks=masks)
            else:
                reg = self.regulariser([e.float() for e in embeddings])
            terms["domain"] = self.weight * reg
        return terms


def regulariser_from_config(cfg: Any) -> DomainContrastiveLoss:
    """The ``multidomain`` section's regulariser; ignored pixels are marked -1 (see forward)."""
    return DomainContrastiveLoss(
        temperature=_knob(cfg, "temperature"),
        form=_knob(cfg, "form"),
        positives=_knob(cfg, "positives"),
        max_pixels=_knob(cfg, "max_pixels"),
        ignore_index=-1,
    )


@register_objective("multidomain", MultiDomain)
def _multidomain(cfg: Any, model: nn.Module, info: DataInfo) -> Objective:
    infos = list(info.domains) or [info]
    names = list(info.domain_names) or [f"domain{d}" for d in range(len(infos))]
    weight = float(_knob(cfg, "weight"))
    reg = regulariser_from_config(cfg) if weight > 0 else None
    return MultiDomain(infos, names, weight, reg, level=_knob(cfg, "level"))
