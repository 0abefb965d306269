"""Every run trains a list of domains: one objective per domain, and the domain regulariser as a term.

A single dataset is a list of one domain. With several (Boutillon et al., MICCAI 2021, arXiv
2105.10310: one network for datasets with different images and classes; ``--datasets A,B`` or
``multidomain.domains``), each step takes one batch per domain; each batch goes through the
network with its domain's batch norm and segmentation head active
(:func:`~pixcon.models.multidomain.use_domain`), through that domain's own instance of the run's
objective (its own classes, ignore index and CE weights), and the terms are summed::

    L = sum_d L_obj(d) + lambda * L_con({z_d}_d, domain ids)

``L_obj`` is any registered objective (``ce``: Boutillon et al.'s per-domain cross-entropy;
``contrast``, ``joint``, ...: multi-domain pretraining), and ``L_con`` the domain-supervised
contrastive regulariser (:class:`~pixcon.losses.multidomain.DomainContrastiveLoss`, lambda =
``multidomain.weight``). The regulariser embeds what the objective's own forward pass computed
(no second pass): the first pass of each domain in the step is captured by a forward hook on the
encoder (``multidomain.level: image``, the paper: bottleneck -> spatial mean -> a two-layer MLP ->
unit norm) or on the decoder (``level: pixel``, pixcon's: the shared projection head on the
decoder features, sampled with a class-balanced budget). Training crops are multiples of the
network's stride, so the captured maps hold no padding.

Terms are named as the objective names them for a single domain (``ce``), and ``<term>_<domain
name>`` with several (``ce_ankle``, ``ce_shoulder``), plus ``domain`` for the regulariser (already
multiplied by lambda).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from pixcon.config import MultiDomainConfig, RunConfig
from pixcon.losses.multidomain import DomainContrastiveLoss
from pixcon.models.multidomain import use_domain
from pixcon.models.segmenter import Segmenter
from pixcon.objectives.base import DataInfo, Objective, create_objective

LEVELS = ("image", "pixel")


class DomainRegulariser(nn.Module):
    """lambda * the domain-supervised contrastive loss over the embeddings of every domain's pass.

    Args:
        model: The (multi-domain) segmenter whose passes are captured; a hook is registered on its
            encoder (image level) or decoder (pixel level).
        loss: The regulariser; for the pixel level its ``ignore_index`` is -1 (each domain's own
            ignore value is mapped to it, since domains may use different ones).
        weight: lambda > 0.
        level: ``"image"`` (the paper) or ``"pixel"``.
        ignore_index: Each domain's ignore value (pixel level).
        image_proj_dim: Output size of the image-level MLP (its hidden width is the bottleneck's).

    Attributes:
        image_projection: The image-level MLP (bottleneck -> hidden -> ``image_proj_dim``), or None.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: DomainContrastiveLoss,
        weight: float,
        level: str,
        ignore_index: Sequence[int],
        image_proj_dim: int = 128,
    ) -> None:
        super().__init__()
        if level not in LEVELS:
            raise ValueError(f"level must be one of {list(LEVELS)}, got {level!r}")
        if weight <= 0:
            raise ValueError(f"weight must be > 0 (no regulariser at 0), got {weight}")
        self.loss, self.weight, self.level = loss, float(weight), level
        self.ignore_index = [int(i) for i in ignore_index]
        self.image_projection: nn.Sequential | None = None
        segmenter = cast(Segmenter, model)  # the segmenter itself (see Args)
        if level == "image":
            bottleneck = int(segmenter.encoder_channels)
            self.image_projection = nn.Sequential(
                nn.Linear(bottleneck, bottleneck),
                nn.ReLU(inplace=True),
                nn.Linear(bottleneck, image_proj_dim),
            )
        self._captured: dict[int, Tensor] = {}
        self._domain: int | None = None  # the domain whose pass is running; None: capture nothing
        part = segmenter.net.encoder if level == "image" else segmenter.net.decoder
        self._hook: RemovableHandle = part.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if self._domain is not None and self._domain not in self._captured:
            # the encoder returns its feature pyramid (the bottleneck last), the decoder one map
            self._captured[self._domain] = output[-1] if isinstance(output, (list, tuple)) else output

    def reset(self) -> None:
        """Forget the passes captured so far (each step starts afresh)."""
        self._captured = {}

    @contextlib.contextmanager
    def capturing(self, domain: int) -> Iterator[None]:
        """Captures the first pass of ``domain`` inside the block."""
        self._domain = domain
        try:
            yield
        finally:
            self._domain = None

    def forward(self, model: nn.Module, batches: Sequence[Any]) -> Tensor:
        """The weighted regulariser over the step's captured passes (then forgotten)."""
        captured, self._captured = self._captured, {}
        if sorted(captured) != list(range(len(batches))):
            raise RuntimeError(
                f"the domain regulariser saw passes of domains {sorted(captured)}, expected every one of "
                f"{len(batches)}: the objective must run the network on each domain's batch"
            )
        maps = [captured[d].float() for d in range(len(batches))]
        if self.image_projection is not None:
            pooled = [m.mean(dim=(-2, -1)) for m in maps]  # (B_d, C_enc) each
            return self.weight * self.loss([F.normalize(self.image_projection(p), dim=1) for p in pooled])
        embeddings = []
        for d, m in enumerate(maps):
            with use_domain(model, d):  # the shared head's batch norm is per domain too
                # the loop passes the segmenter, or a wrapper with its modules
                embeddings.append(cast(Segmenter, model).projection(m))  # (B_d, D, h, w)
        masks = [
            batch[1].masked_fill(batch[1] == ignore, self.loss.ignore_index)
            for batch, ignore in zip(batches, self.ignore_index, strict=True)
        ]  # each domain's ignore value -> the regulariser's (-1, no class id)
        return self.weight * self.loss(embeddings, masks=masks)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, level={self.level!r}"


class DomainObjectives(nn.Module):
    """The run's objective for each of its domains, plus the domain regulariser where there is one.

    ``forward(model, batches)`` takes one batch per domain (in the order of
    :func:`pixcon.config.resolve_domains`, the primary first) and returns the named loss terms.
    Its attributes say what the loop feeds and trains, as an :class:`Objective`'s do.

    Args:
        objectives: One objective per domain, all of the same kind.
        names: One name per domain.
        regulariser: The domain regulariser, or None (a single domain, or ``multidomain.weight: 0``).
    """

    def __init__(
        self,
        objectives: Sequence[Objective],
        names: Sequence[str],
        regulariser: DomainRegulariser | None = None,
    ) -> None:
        super().__init__()
        if not objectives or len(objectives) != len(names):
            raise ValueError(f"need one objective per domain, got {len(objectives)} for names {list(names)}")
        if len({type(o) for o in objectives}) > 1:
            raise ValueError("every domain trains the same objective")
        self.objectives = nn.ModuleList(objectives)
        self.names = list(names)
        self.regulariser = regulariser
        first = objectives[0]
        self.name, self.views, self.images = first.name, first.views, first.images
        self.partners = first.partners
        if regulariser is not None and regulariser.level == "pixel" and first.views != 1:
            raise ValueError(
                f"multidomain.level: 'pixel' needs the masks of (images, masks) batches; objective "
                f"{first.name!r} trains on two views: use multidomain.level: image"
            )
        self.uses_segmentation_head = any(o.uses_segmentation_head for o in objectives)
        self.uses_projection_head = any(o.uses_projection_head for o in objectives) or (
            regulariser is not None and regulariser.level == "pixel"
        )

    def term(self, key: str, domain: int) -> str:
        """The logged name of an objective's term ``key`` on ``domain``."""
        return key if len(self.names) == 1 else f"{key}_{self.names[domain]}"

    def forward(self, model: nn.Module, batches: Sequence[Any]) -> dict[str, Tensor]:
        if len(batches) != len(self.objectives):
            raise ValueError(f"expected one batch per domain ({len(self.objectives)}), got {len(batches)}")
        terms: dict[str, Tensor] = {}
        if self.regulariser is not None:
            self.regulariser.reset()
        for d, (objective, batch) in enumerate(zip(self.objectives, batches, strict=True)):
            capture = (
                self.regulariser.capturing(d) if self.regulariser is not None else contextlib.nullcontext()
            )
            with use_domain(model, d), capture:
                for key, value in objective(model, batch).items():
                    terms[self.term(key, d)] = value
        if self.regulariser is not None:
            terms["domain"] = self.regulariser(model, batches)
        return terms


def regulariser_from_config(
    cfg: MultiDomainConfig, model: nn.Module, infos: Sequence[DataInfo]
) -> DomainRegulariser | None:
    """The ``multidomain`` section's regulariser for ``model``; None for a single domain or
    ``weight: 0``."""
    if len(infos) < 2 or cfg.weight == 0:
        return None
    loss = DomainContrastiveLoss(
        temperature=cfg.temperature,
        form=cfg.form,
        positives=cfg.positives,
        max_pixels=cfg.max_pixels,
        ignore_index=-1,
    )
    return DomainRegulariser(
        model,
        loss,
        weight=cfg.weight,
        level=cfg.level,
        ignore_index=[i.ignore_index for i in infos],
        image_proj_dim=cfg.image_proj_dim,
    )


def create_objectives(
    name: str, cfg: RunConfig, model: nn.Module, infos: Sequence[DataInfo], names: Sequence[str]
) -> DomainObjectives:
    """The registered objective ``name`` for every domain of the run (``infos``, ``names``: one per
    domain, the primary first), with the regulariser of ``cfg.multidomain`` where it applies."""
    objectives = []
    for d, info in enumerate(infos):
        with use_domain(model, d):  # a factory may read the active domain's head
            objectives.append(create_objective(name, cfg, model, info))
    return DomainObjectives(objectives, names, regulariser_from_config(cfg.multidomain, model, infos))
