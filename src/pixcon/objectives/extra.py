"""HCSC, CLAWS and ARIEL as training objectives on labeled images (``images="labeled"``, 1 view).

Each trains the encoder, decoder and projection head (not the segmentation head) on
``(images (B, C, H, W) in [0, 1], masks (B, H, W))`` batches; CE fine-tuning follows as for
``contrast``. The math lives in :mod:`pixcon.losses.hcsc`, :mod:`pixcon.losses.claws` and
:mod:`pixcon.losses.ariel`; the paper-to-pixel mappings are documented there.

Hyper-parameters are read from the config section named after the objective
(``cfg.hcsc.temperature`` ...); a missing section or key takes the config section's default,
listed below. "Paper" gives the published value where the method has one; pixcon-only knobs say
so.

``hcsc`` (Guo et al., CVPR 2022) -- terms ``instance`` (selective pixel contrast) and ``proto``
(hierarchical ProtoNCE). The prototypes are refreshed by the objective itself: a bank filled with
``bank_per_step`` sampled pixel embeddings per step is re-clustered once full and then every
``refresh_every`` steps (HCSC re-clusters every epoch), so the loop needs no hook. The bank, the
prototypes and the generators are in the objective's state dict (a resumed run keeps them); under
DDP every rank's pushed embeddings are gathered into one bank that all ranks share.

============================  ===============  =====================================================
key                           default          meaning (paper value)
============================  ===============  =====================================================
temperature                   0.2              t of both terms, mean concentration (paper 0.2)
num_prototypes                [64, 16, 4]      prototypes per level, finest first (paper 3000,
                                               2000, 1000 on ImageNet images)
bank_size                     8192             pixel embeddings clustered (paper: the whole dataset)
bank_per_step                 512              embeddings pushed into the bank per step and rank
                                               (pixcon)
refresh_every                 100              steps between re-clusterings (paper: one epoch)
kmeans_iters                  20               Lloyd iterations per level (reference code: 20)
selection                     "sample"         sample | expected | hard | none (paper: sample)
proto_selection               true             select negative prototypes by parent (paper: on)
use_concentration             true             PCL per-prototype temperature phi (paper: on)
proto_weight                  1.0              weight of the prototype term (reference code: 1)
max_pixels                    4096             class-balanced pixel budget per step (pixcon)
seed                          0                k-means, selection and bank-subsampling seed;
                                               rank r's selections start from seed + r (pixcon)
============================  ===============  =====================================================

``claws`` (Herrera-Gerena et al., 2021) -- term ``contrast``: supervised pixel contrast of two
aligned photometric views of the hard-attention-masked images.

============================  ===============  =====================================================
key                           default          meaning (paper value)
============================  ===============  =====================================================
temperature                   0.1              t (pixcon's pixel-loss default; not taken from the
                                               paper)
attention                     "labels"         labels | feature_norm: source of the hard mask
background_classes            []               classes masked out with ``attention: labels``
                                               (paper: the background around the object)
attend_fraction               0.5              share of pixels kept with ``feature_norm`` (pixcon)
jitter                        0.5              colour-jitter strength s of the views (SimCLR:
                                               0.5-1)
max_pixels                    4096             pixel budget over both views (pixcon)
============================  ===============  =====================================================

``ariel`` (Feng et al., WWW 2022) -- terms ``contrast`` (view 1 vs view 2), ``adversarial``
(view 1 vs the PGD image, times ``adv_weight``) and ``info`` (the information regulariser, times
``info_weight``). Each step costs ``steps`` extra forward-backward passes of the batch for the
attack, one more forward, and a forward-backward of 4 B images.

============================  ===============  =====================================================
key                           default          meaning (paper value)
============================  ===============  =====================================================
temperature                   0.4              t (authors' code default 0.4; 0.2-0.9 per dataset)
epsilon                       0.0313725        L-inf radius, 8/255 (image-PGD convention; ARIEL's
                                               budget is on edges and features)
alpha                         0.0078431        PGD step, 2/255 (image-PGD convention)
steps                         5                PGD steps (paper's code: 5)
adv_weight                    1.0              weight of the adversarial term (paper's epsilon,
                                               0.5-2 per dataset)
info_weight                   1.0              weight of the regulariser (paper's lambda, 0-2)
jitter                        0.5              colour-jitter strength of the two views (pixcon)
max_pixels                    2048             pixel positions per view (pixcon)
============================  ===============  =====================================================
"""

from __future__ import annotations

from dataclasses import asdict
from typing import cast

import torch
from torch import Tensor, nn

from pixcon.config import RunConfig
from pixcon.losses.ariel import (
    extra_pass,
    information_regularizer,
    pgd_attack,
    two_view_pixel_loss,
)
from pixcon.losses.claws import (
    ATTENTION_SOURCES,
    CLAWSLoss,
    aligned_view,
    attended_labels,
    attention_from_feature_norm,
    attention_from_labels,
    hard_attention,
)
from pixcon.losses.dense import balanced_sample, downsample_labels
from pixcon.losses.hcsc import HCSCLoss
from pixcon.models.segmenter import Segmenter
from pixcon.objectives.base import DataInfo, Objective, register_objective

__all__ = ["ARIEL", "CLAWS", "HCSC"]


def _unwrap(model: nn.Module) -> Segmenter:
    """The bare model under Fabric/DDP wrappers (extra no-grad or input-gradient passes skip DDP)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module  # type: ignore[assignment]
    return cast(Segmenter, model)  # what the training loop wraps is the segmenter


def _flatten(proj: Tensor, idx: Tensor) -> Tensor:
    """(B, D, h, w) -> the rows ``idx`` of the flattened (B*h*w, D) map."""
    b, d, h, w = proj.shape
    return proj.permute(0, 2, 3, 1).reshape(b * h * w, d)[idx]


class HCSC(Objective):
    """HCSC: selective pixel contrast + hierarchical prototype contrast (see :mod:`pixcon.losses.hcsc`)."""

    name = "hcsc"
    uses_projection_head = True

    def __init__(self, loss: HCSCLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, masks = batch  # (B, C, H, W), (B, H, W)
        # the loop passes the segmenter, or a wrapper with its methods
        return self.loss(cast(Segmenter, model).project(images), masks)  # project: (B, D, H/4, W/4)


class CLAWS(Objective):
    """CLAWS: hard-attention-masked aligned views, supervised pixel contrast (see :mod:`pixcon.losses.claws`).

    With ``attention="feature_norm"`` the image sides must be multiples of the model's stride
    (training crops are), because the map comes from ``Segmenter.features``.
    """

    name = "claws"
    uses_projection_head = True

    def __init__(
        self,
        loss: CLAWSLoss,
        attention: str = "labels",
        background_classes: tuple[int, ...] = (),
        attend_fraction: float = 0.5,
        jitter: float = 0.5,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_SOURCES:
            raise ValueError(f"unknown attention {attention!r}; choose one of {sorted(ATTENTION_SOURCES)}")
        if not 0 < attend_fraction <= 1:
            raise ValueError(f"attend_fraction must be in (0, 1], got {attend_fraction}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.loss, self.attention_source = loss, attention
        self.background_classes, self.attend_fraction = (
            tuple(int(c) for c in background_classes),
            attend_fraction,
        )
        self.jitter, self.ignore_index = jitter, ignore_index

    def attention(self, model: nn.Module, images: Tensor, masks: Tensor) -> Tensor:
        """The hard attention mask (B, H, W) of a batch."""
        if self.attention_source == "labels":
            return attention_from_labels(masks, self.ignore_index, self.background_classes)
        raw = _unwrap(model)
        with torch.no_grad(), extra_pass(raw):
            _, decoded = raw.features(images)  # (B, C_dec, H/4, W/4)
        return attention_from_feature_norm(
            decoded, (images.shape[-2], images.shape[-1]), self.attend_fraction
        )

    def forward(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, masks = batch  # (B, C, H, W), (B, H, W)
        attend = self.attention(model, images, masks)  # (B, H, W)
        views = [hard_attention(aligned_view(images, self.jitter), attend) for _ in range(2)]
        proj = cast(Segmenter, model).project(torch.cat(views))  # (2B, D, h, w)
        return {"contrast": self.loss(list(proj.chunk(2)), attended_labels(masks, attend, self.ignore_index))}


class ARIEL(Objective):
    """ARIEL: two aligned views + a PGD view + the information regulariser (see :mod:`pixcon.losses.ariel`).

    Per step: view 1's embeddings at the sampled positions are computed without gradient and held
    fixed while :func:`pgd_attack` perturbs the image to maximise the two-view loss against them
    (on the bare model inside :func:`extra_pass`: dropout off, BatchNorm running statistics
    untouched); then views 1 and 2, the adversarial image and the image go through the model in
    one batch.
    """

    name = "ariel"
    uses_projection_head = True

    def __init__(
        self,
        temperature: float = 0.4,
        epsilon: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 5,
        adv_weight: float = 1.0,
        info_weight: float = 1.0,
        jitter: float = 0.5,
        max_pixels: int = 2048,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if min(epsilon, alpha, adv_weight, info_weight, jitter) < 0 or steps < 0:
            raise ValueError("epsilon, alpha, steps, adv_weight, info_weight and jitter must be >= 0")
        if max_pixels < 2:
            raise ValueError(f"max_pixels must be >= 2, got {max_pixels}")
        self.temperature, self.epsilon, self.alpha, self.steps = (
            float(temperature),
            float(epsilon),
            float(alpha),
            int(steps),
        )
        self.adv_weight, self.info_weight, self.jitter = float(adv_weight), float(info_weight), float(jitter)
        self.max_pixels, self.ignore_index = int(max_pixels), ignore_index

    def _pair_loss(self, za: Tensor, zb: Tensor, labels: Tensor) -> Tensor:
        return two_view_pixel_loss(za, zb, labels, self.temperature, self.ignore_index)

    def forward(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        images, masks = batch  # (B, C, H, W), (B, H, W)
        raw = _unwrap(model)
        v1, v2 = aligned_view(images, self.jitter), aligned_view(images, self.jitter)  # (B, C, H, W) each
        attack = self.adv_weight > 0 and self.epsilon > 0 and self.steps > 0 and self.alpha > 0
        idx = labels = None
        x_adv = images
        if attack:
            with torch.no_grad(), extra_pass(raw):
                p1 = raw.project(v1)  # (B, D, h, w)
            labels = downsample_labels(masks, (p1.shape[-2], p1.shape[-1])).flatten()  # (B*h*w,)
            idx = balanced_sample(labels, self.max_pixels, self.ignore_index)  # (N,)
            anchor, y = _flatten(p1, idx), labels[idx]  # (N, D), (N,)
            with extra_pass(raw):
                x_adv = pgd_attack(
                    # idx is this block's sample (a Tensor) while the attack runs
                    lambda x: self._pair_loss(anchor, _flatten(raw.project(x), cast(Tensor, idx)), y),
                    images,
                    self.epsilon,
                    self.alpha,
                    self.steps,
                ).images
        inputs = [v1, v2]
        if self.adv_weight > 0:
            inputs.append(x_adv)
        if self.info_weight > 0:
            inputs.append(images)
        proj = cast(Segmenter, model).project(torch.cat(inputs))  # (len(inputs) * B, D, h, w)
        if idx is None or labels is None:
            labels = downsample_labels(masks, (proj.shape[-2], proj.shape[-1])).flatten()  # (B*h*w,)
            idx = balanced_sample(labels, self.max_pixels, self.ignore_index)  # (N,)
        y = labels[idx]
        z = [_flatten(p, idx) for p in proj.chunk(len(inputs))]  # each (N, D)
        terms = {"contrast": self._pair_loss(z[0], z[1], y)}
        if self.adv_weight > 0:
            terms["adversarial"] = self.adv_weight * self._pair_loss(z[0], z[2], y)
        if self.info_weight > 0:
            terms["info"] = self.info_weight * information_regularizer(z[0], z[1], z[-1])
        return terms


@register_objective("hcsc", HCSC)
def _hcsc(cfg: RunConfig, model: nn.Module, info: DataInfo) -> Objective:
    h = cfg.hcsc
    return HCSC(
        HCSCLoss(**{**asdict(h), "num_prototypes": tuple(h.num_prototypes)}, ignore_index=info.ignore_index)
    )


@register_objective("claws", CLAWS)
def _claws(cfg: RunConfig, model: nn.Module, info: DataInfo) -> Objective:
    c = cfg.claws
    return CLAWS(
        CLAWSLoss(c.temperature, max_pixels=c.max_pixels, ignore_index=info.ignore_index),
        attention=c.attention,
        background_classes=tuple(c.background_classes),
        attend_fraction=c.attend_fraction,
        jitter=c.jitter,
        ignore_index=info.ignore_index,
    )


@register_objective("ariel", ARIEL)
def _ariel(cfg: RunConfig, model: nn.Module, info: DataInfo) -> Objective:
    return ARIEL(**asdict(cfg.ariel), ignore_index=info.ignore_index)
