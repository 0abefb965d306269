"""Self-supervised two-view objectives: GLCNet, dense SimCLR and DirectCLR.

Each trains on every image of the training split (``images = "all"``) from
:class:`pixcon.data.views.TwoViews` batches (``views = 2``)::

    {"view1": (B, C, S, S), "view2": (B, C, S, S), "geom1": (B, 5), "geom2": (B, 5),
     "mask1": (B, S, S), "mask2": (B, S, S), "index": (B,)}        # masks are not used

and returns named loss terms whose sum the loop minimises:

============== ===================== ==========================================================
name           terms                 what it trains
============== ===================== ==========================================================
glcnet         ``global``, ``local`` encoder + decoder + the objective's two MLPs
                                     (Li et al., TGRS 2022, arXiv 2106.10605)
dense_simclr   ``infonce``           encoder + decoder + the segmenter's projection head
                                     (SimCLR's NT-Xent over corresponding pixels)
directclr      ``directclr``         encoder + decoder, no projector
                                     (Jing et al., ICLR 2022, arXiv 2110.09348)
============== ===================== ==========================================================

None of them uses the segmentation head. The factories read their hyper-parameters from the
``ssl`` config section (its keys, defaults and the papers' values: ``docs/config.md``).

Import this module to register the objectives (``@register_objective``).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from pixcon.config import RunConfig
from pixcon.data.views import CELL_OFFSET, correspondence, map_boxes
from pixcon.losses.glcnet import GLCNetLoss, pool_patches, projection_mlp, sample_patches, style_statistics
from pixcon.losses.infonce import DirectCLRLoss, PixelInfoNCELoss
from pixcon.models.segmenter import Segmenter
from pixcon.objectives.base import DataInfo, Objective, register_objective

log = logging.getLogger(__name__)


# Mean input-gradient centroid of a decoder cell, minus stride * a (the method of
# tests/data/test_views.py, 64 px, ResNet-18, 3 seeds); the views module assumes CELL_OFFSET (0.5).
# (stride, lowest, highest offset in px); tests/objectives/test_ssl.py re-measures them.
MEASURED_CELL_OFFSETS: dict[str, tuple[int, float, float]] = {
    "deeplabv3": (8, 2.2, 2.5),
    "fpn": (4, -1.2, -0.8),
    "unet": (1, -2.3, -1.8),
}


def warn_cell_geometry(model: nn.Module, objective: str) -> None:
    """Logs a warning when ``model``'s decoder cells are not centred where the two-view
    correspondences assume (``views.CELL_OFFSET``, measured for DeepLabV3+ only): the positive
    pairs of ``objective`` are then shifted by a pixel or two."""
    arch = getattr(getattr(model, "segmenter", model), "arch", None)
    if arch in MEASURED_CELL_OFFSETS:
        stride, low, high = MEASURED_CELL_OFFSETS[arch]
        log.warning(
            "%s matches pixels of two views assuming decoder cells centred as in DeepLabV3+ "
            "(views.CELL_OFFSET = %.1f px past stride * a); %s cells are centred %+.1f to %+.1f px "
            "past stride * a (stride %d), so its positive pairs are off by one or two pixels. Use "
            "--arch deeplabv3plus for two-view objectives.",
            objective,
            CELL_OFFSET,
            arch,
            low,
            high,
            stride,
        )


def feature_channels(model: nn.Module) -> tuple[int, int]:
    """(channels of the coarsest encoder feature, decoder channels) of a segmenter.

    Read from the smp network where it exposes them; otherwise measured with one small forward
    pass of :meth:`~pixcon.models.segmenter.Segmenter.features` in eval mode.
    """
    try:
        return int(model.net.encoder.out_channels[-1]), int(model.net.segmentation_head[0].in_channels)  # type: ignore[union-attr, index]
    except (AttributeError, IndexError, TypeError):
        pass
    side = int(getattr(model, "stride", 32))
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, int(model.in_channels), side, side, device=param.device)  # type: ignore[arg-type]
            encoded, decoded = model.features(x)  # type: ignore[operator]
    finally:
        model.train(was_training)
    return int(encoded[-1].shape[1]), int(decoded.shape[1])


def _views(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    try:
        v1, v2, g1, g2 = batch["view1"], batch["view2"], batch["geom1"], batch["geom2"]
    except (KeyError, TypeError) as err:
        raise ValueError(
            "two-view objectives need TwoViews batches (dict with view1/view2/geom1/geom2)"
        ) from err
    if v1.shape != v2.shape or v1.dim() != 4:
        raise ValueError(
            f"view1 and view2 must both be (B, C, S, S), got {tuple(v1.shape)} and {tuple(v2.shape)}"
        )
    if g1.shape != (v1.shape[0], 5) or g2.shape != g1.shape:
        raise ValueError(f"geom1 and geom2 must be (B, 5), got {tuple(g1.shape)} and {tuple(g2.shape)}")
    return v1, v2, g1.float(), g2.float()


def _check_grid(view: Tensor, grid: tuple[int, int]) -> None:
    """Correspondence assumes the feature grid tiles the view exactly (stride divides the size)."""
    h, w = view.shape[-2:]
    if h % grid[0] or w % grid[1]:
        raise ValueError(f"view size {(h, w)} is not a multiple of the feature grid {grid}")


class GLCNetObjective(Objective):
    """GLCNet: global style contrast + local feature-matching contrast (Li et al., TGRS 2022).

    Style vectors from the coarsest encoder features, patches pooled from the decoder features;
    see :mod:`pixcon.losses.glcnet`. The two MLPs are this module's parameters.

    Args:
        encoder_channels: Channels C of the coarsest encoder feature (style vector: 2C).
        decoder_channels: Channels of the decoder features.
        temperature, global_weight: See :class:`pixcon.losses.glcnet.GLCNetLoss`.
        num_patches: K patches per image.
        patch_fraction: Patch side over view side, in (0, 1].
        hidden_dim, out_dim: Widths of both MLPs.
    """

    name: ClassVar[str] = "glcnet"
    views: ClassVar[int] = 2
    images: ClassVar[str] = "all"
    uses_segmentation_head: ClassVar[bool] = False
    uses_projection_head: ClassVar[bool] = False

    def __init__(
        self,
        encoder_channels: int,
        decoder_channels: int,
        temperature: float = 0.5,
        global_weight: float = 0.5,
        num_patches: int = 4,
        patch_fraction: float = 48 / 224,
        hidden_dim: int = 256,
        out_dim: int = 128,
    ) -> None:
        super().__init__()
        if num_patches < 1:
            raise ValueError(f"num_patches must be >= 1, got {num_patches}")
        if not 0 < patch_fraction <= 1:
            raise ValueError(f"patch_fraction must be in (0, 1], got {patch_fraction}")
        self.num_patches, self.patch_fraction = int(num_patches), float(patch_fraction)
        self.global_head = projection_mlp(2 * encoder_channels, hidden_dim, out_dim)
        self.local_head = projection_mlp(decoder_channels, hidden_dim, out_dim)
        self.loss = GLCNetLoss(temperature=temperature, global_weight=global_weight)

    def forward(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        v1, v2, g1, g2 = _views(batch)
        size = (int(v1.shape[-2]), int(v1.shape[-1]))
        segmenter = cast(Segmenter, model)  # the loop passes the segmenter, or a wrapper with its methods
        enc1, dec1 = segmenter.features(v1)  # [..., (B, C, h', w')], (B, C_dec, h, w)
        enc2, dec2 = segmenter.features(v2)
        global1 = self.global_head(style_statistics(enc1[-1]))  # (B, out)
        global2 = self.global_head(style_statistics(enc2[-1]))
        with torch.no_grad():
            boxes, valid = sample_patches(g1, g2, self.num_patches, self.patch_fraction)  # (B, K, 4), (B,)
            boxes1, boxes2 = map_boxes(boxes, g1, size), map_boxes(boxes, g2, size)  # (B, K, 4) each
        if not bool(valid.any()):  # possible with ssl.min_overlap = 0: nothing to match this batch
            log.debug("glcnet: no view pair of the batch overlaps; the local term is 0")
            # An empty local term that still reaches the decoder and the local head (DDP waits for them).
            empty = dec1.new_zeros((0, dec1.shape[1])) + 0.0 * (dec1.sum() + dec2.sum())  # (0, C_dec)
            return self.loss(global1, global2, self.local_head(empty), self.local_head(empty))
        if not bool(valid.all()):
            log.debug(
                "glcnet: %d of %d view pairs do not overlap; no patches from them",
                int((~valid).sum()),
                len(valid),
            )
            dec1, dec2, boxes1, boxes2 = dec1[valid], dec2[valid], boxes1[valid], boxes2[valid]
        local1 = pool_patches(dec1, boxes1, size).flatten(0, 1)  # (B'*K, C_dec)
        local2 = pool_patches(dec2, boxes2, size).flatten(0, 1)
        return self.loss(global1, global2, self.local_head(local1), self.local_head(local2))

    def extra_repr(self) -> str:
        return f"num_patches={self.num_patches}, patch_fraction={self.patch_fraction:.4f}"


class DenseSimCLRObjective(Objective):
    """Dense SimCLR: pixel InfoNCE between corresponding pixels of the projection-head embeddings.

    Args:
        temperature: t > 0.
        max_pairs: Corresponding pairs per batch.
    """

    name: ClassVar[str] = "dense_simclr"
    views: ClassVar[int] = 2
    images: ClassVar[str] = "all"
    uses_segmentation_head: ClassVar[bool] = False
    uses_projection_head: ClassVar[bool] = True

    def __init__(self, temperature: float = 0.2, max_pairs: int = 1024) -> None:
        super().__init__()
        self.loss = PixelInfoNCELoss(temperature=temperature, max_pairs=max_pairs)

    def forward(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        v1, v2, g1, g2 = _views(batch)
        segmenter = cast(Segmenter, model)  # the loop passes the segmenter, or a wrapper with its methods
        z1, z2 = segmenter.project(v1), segmenter.project(v2)  # (B, D, h, w) each
        grid = (int(z1.shape[-2]), int(z1.shape[-1]))
        _check_grid(v1, grid)
        corr = correspondence(g1, g2, grid, size=v1.shape[-2:])  # (B, h*w)
        return {"infonce": self.loss(z1, z2, corr)}


class DirectCLRObjective(Objective):
    """DirectCLR on corresponding pixels of the decoder features (no projector).

    Args:
        dim: d0, the leading decoder channels the InfoNCE sees.
        temperature: t > 0.
        max_pairs: Corresponding pairs per batch.
    """

    name: ClassVar[str] = "directclr"
    views: ClassVar[int] = 2
    images: ClassVar[str] = "all"
    uses_segmentation_head: ClassVar[bool] = False
    uses_projection_head: ClassVar[bool] = False

    def __init__(self, dim: int = 64, temperature: float = 0.1, max_pairs: int = 1024) -> None:
        super().__init__()
        self.loss = DirectCLRLoss(dim=dim, temperature=temperature, max_pairs=max_pairs)

    def forward(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        v1, v2, g1, g2 = _views(batch)
        segmenter = cast(Segmenter, model)  # the loop passes the segmenter, or a wrapper with its methods
        _, r1 = segmenter.features(v1)  # (B, C_dec, h, w)
        _, r2 = segmenter.features(v2)
        grid = (int(r1.shape[-2]), int(r1.shape[-1]))
        _check_grid(v1, grid)
        corr = correspondence(g1, g2, grid, size=v1.shape[-2:])  # (B, h*w)
        return {"directclr": self.loss(r1, r2, corr)}


@register_objective("glcnet", GLCNetObjective)
def create_glcnet(cfg: RunConfig, model: nn.Module, info: DataInfo) -> GLCNetObjective:
    """GLCNet sized for ``model``'s encoder and decoder; knobs from ``cfg.ssl`` (see the module docstring)."""
    warn_cell_geometry(model, "glcnet")
    s = cfg.ssl
    encoder_channels, decoder_channels = feature_channels(model)
    return GLCNetObjective(
        encoder_channels=encoder_channels,
        decoder_channels=decoder_channels,
        temperature=s.glcnet_temperature,
        global_weight=s.glcnet_global_weight,
        num_patches=s.glcnet_patches,
        patch_fraction=s.glcnet_patch_fraction,
        hidden_dim=s.glcnet_hidden_dim,
        out_dim=s.glcnet_out_dim,
    )


@register_objective("dense_simclr", DenseSimCLRObjective)
def create_dense_simclr(cfg: RunConfig, model: nn.Module, info: DataInfo) -> DenseSimCLRObjective:
    """Dense SimCLR on the segmenter's projection head; knobs from ``cfg.ssl``."""
    warn_cell_geometry(model, "dense_simclr")
    return DenseSimCLRObjective(temperature=cfg.ssl.dense_temperature, max_pairs=cfg.ssl.max_pairs)


@register_objective("directclr", DirectCLRObjective)
def create_directclr(cfg: RunConfig, model: nn.Module, info: DataInfo) -> DirectCLRObjective:
    """DirectCLR on the decoder features; checks d0 against the decoder's channels."""
    warn_cell_geometry(model, "directclr")
    dim, (_, decoder_channels) = cfg.ssl.directclr_dim, feature_channels(model)
    if not 1 <= dim <= decoder_channels:
        raise ValueError(
            f"ssl.directclr_dim must be in [1, {decoder_channels}] (decoder channels), got {dim}"
        )
    return DirectCLRObjective(dim=dim, temperature=cfg.ssl.directclr_temperature, max_pairs=cfg.ssl.max_pairs)
