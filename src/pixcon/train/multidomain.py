"""Multi-domain runs (Boutillon et al., MICCAI 2021): model set-up, checkpoints, one-domain views.

The loop (:func:`pixcon.train.loop.run_training`) trains the ``multidomain`` objective on the
domains of :func:`pixcon.config.resolve_domains`; this module holds what is specific to them:

* :func:`prepare_model` -- a plain segmenter, initialised from ``train.init_from`` (plain weights
  are loaded *before* the conversion, so every domain's BN starts from the loaded statistics), then
  converted to a :class:`~pixcon.models.multidomain.MultiDomainSegmenter`;
* :func:`model_from_checkpoint` -- one domain of a multi-domain checkpoint as a plain
  :class:`~pixcon.models.Segmenter` plus a checkpoint dict that describes that domain, which is
  how ``evaluate``, ``predict``, ``diagnose``, ``pseudo-label`` and ``report`` read them
  (``--domain NAME``; the primary by default);
* :func:`train_multidomain` -- a run from a primary-domain config and extra dataset folders.

A multi-domain checkpoint is a pixcon checkpoint whose ``model`` is the multi-domain network's
state dict, with a ``domains`` entry: one ``{"name", "num_classes", "class_names",
"ignore_index", "in_channels", "data"}`` per domain, the primary first. Its top-level
``num_classes``, ``class_names`` and ``ignore_index`` are the primary's.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pixcon.config import ConfigError, RunConfig, default_domain_name, from_dict, to_dict
from pixcon.models import Segmenter
from pixcon.models.multidomain import MultiDomainSegmenter, export_domain
from pixcon.train.checkpoint import CheckpointError

log = logging.getLogger(__name__)

OBJECTIVE = "multidomain"


def check_setup(cfg: RunConfig) -> None:
    """The objective and the domain list agree.

    Raises:
        ConfigError: ``multidomain`` without another domain, or domains with another objective.
    """
    extra = len(cfg.multidomain.domains)
    if cfg.train.objective == OBJECTIVE and extra == 0:
        raise ConfigError(
            "train.objective: 'multidomain' needs at least one more dataset besides data.root "
            "(pixcon train --datasets A,B, or multidomain.domains)"
        )
    if cfg.train.objective != OBJECTIVE and extra:
        raise ConfigError(
            f"multidomain.domains lists {extra} more dataset(s) but train.objective is "
            f"{cfg.train.objective!r}; several datasets train with the objective 'multidomain' "
            "(pixcon train --datasets A,B); set multidomain.domains=[] for a single-domain run"
        )


def is_multidomain(state: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint holds a multi-domain network."""
    return bool(state.get("domains"))


def domain_names(state: dict[str, Any]) -> list[str]:
    return [str(d["name"]) for d in state.get("domains") or []]


def build_multidomain(
    cfg: RunConfig, segmenter: Segmenter, num_classes: Sequence[int]
) -> MultiDomainSegmenter:
    """``segmenter`` (changed in place) as the multi-domain network of ``cfg``'s ``multidomain``
    section: an image head only where the image-level regulariser trains it."""
    md = cfg.multidomain
    image_head = md.level == "image" and md.weight > 0
    return MultiDomainSegmenter(
        segmenter,
        num_classes=list(num_classes),
        shared_affine=md.shared_affine,
        image_proj_dim=md.image_proj_dim if image_head else None,
    )


def _plain_weights(state: dict[str, Any], path: str | Path) -> dict[str, Tensor]:
    """The state dict of a checkpoint as a single-domain network: itself, or the primary domain's
    export of a multi-domain one."""
    if not is_multidomain(state):
        return dict(state["model"])
    model, _ = model_from_checkpoint(state, path)
    log.info(
        "init_from %s: multi-domain checkpoint, taking its primary domain %r", path, domain_names(state)[0]
    )
    return model.state_dict()


def prepare_model(
    model: Segmenter,
    cfg: RunConfig,
    init: dict[str, Any] | None,
    init_path: str | Path | None,
    num_classes: Sequence[int] | None,
    names: Sequence[str] = (),
) -> nn.Module:
    """The network a run trains, initialised from ``init`` (a loaded ``train.init_from``).

    Args:
        model: A fresh plain segmenter with the primary domain's classes.
        cfg: The run's config.
        init: The loaded ``train.init_from`` checkpoint, or None.
        init_path: Its path, for messages.
        num_classes: Classes per domain for a multi-domain run; None for a single-domain one.
        names: The run's domain names, in order; a multi-domain ``init`` must have the same.

    Returns:
        ``model`` itself (single-domain) or the :class:`MultiDomainSegmenter` around it. A plain
        ``init`` is loaded into ``model`` before the conversion; a multi-domain ``init`` into a
        multi-domain run is loaded after it (the same domain names in the same order; heads whose class count
        differs start fresh); a multi-domain ``init`` into a single-domain run gives its primary
        domain.
    """
    from pixcon.train.loop import _load_model_weights

    if init is not None and (num_classes is None or not is_multidomain(init)):
        assert init_path is not None
        _load_model_weights(model, {"model": _plain_weights(init, init_path)}, init_path)
    if num_classes is None:
        return model
    md = build_multidomain(cfg, model, num_classes)
    if init is not None and is_multidomain(init):
        _load_multidomain_weights(md, init, init_path, names)
    return md


def _load_multidomain_weights(
    md: MultiDomainSegmenter, init: dict[str, Any], path: str | Path | None, run_names: Sequence[str]
) -> None:
    names = domain_names(init)
    if names != list(run_names):
        # BN copies and heads are indexed by domain: another order would feed one domain's batches
        # through another's statistics and head.
        raise CheckpointError(
            f"init_from {path}: a multi-domain checkpoint of domains {names}, this run has {list(run_names)}; "
            "name and order the domains as in that run (--datasets NAME=PATH, the primary first), or start "
            "from a single-domain checkpoint"
        )
    own = md.state_dict()
    # The image head depends on multidomain.level / weight: it is taken where both have it.
    weights = {k: v for k, v in init["model"].items() if not k.startswith("image_projection.") or k in own}
    skipped = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    for k in skipped:
        del weights[k]
    result = md.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if k not in skipped and not k.startswith("image_projection.")]
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"init_from {path}: model mismatch (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); "
            "was it trained with the same model.arch, model.encoder and multidomain.shared_affine?"
        )
    if skipped:
        log.info("init_from %s: re-initialised %s (shape differs)", path, skipped)


def domain_index(state: dict[str, Any], domain: str | None, path: str | Path = "checkpoint") -> int:
    """Index of ``domain`` (None: the primary, 0) in a multi-domain checkpoint.

    Raises:
        ValueError: ``domain`` is not one of the checkpoint's domains (the message lists them),
            or the checkpoint is a single-domain one and ``domain`` is given.
    """
    if not is_multidomain(state):
        if domain is not None:
            raise ValueError(
                f"checkpoint {path} is a single-domain checkpoint; --domain {domain!r} applies to "
                "multi-domain checkpoints only"
            )
        return 0
    names = domain_names(state)
    if domain is None:
        return 0
    if domain not in names:
        raise ValueError(f"checkpoint {path} has no domain {domain!r}; its domains: {names}")
    return names.index(domain)


def domain_state(state: dict[str, Any], index: int) -> dict[str, Any]:
    """A copy of a multi-domain checkpoint dict that describes domain ``index`` as a single-domain
    one: its classes, ignore index and data section (``config.data``), and ``domain`` = its name.
    The config's ``multidomain.domains`` is emptied, so the config reads as a single-domain one."""
    dom = state["domains"][index]
    config = dict(state["config"])
    config["data"] = dict(dom["data"])
    config["multidomain"] = {**config.get("multidomain", {}), "domains": [], "primary_name": None}
    return {
        **state,
        "config": config,
        "num_classes": int(dom["num_classes"]),
        "class_names": list(dom["class_names"]),
        "ignore_index": int(dom["ignore_index"]),
        "in_channels": dom.get("in_channels", state.get("in_channels")),
        "domain": str(dom["name"]),
    }


def model_from_checkpoint(
    state: dict[str, Any], path: str | Path = "checkpoint", domain: str | None = None
) -> tuple[Segmenter, dict[str, Any]]:
    """One domain of a loaded multi-domain checkpoint: a plain segmenter in eval mode and
    :func:`domain_state` of that domain."""
    from pixcon.train.loop import build_model

    index = domain_index(state, domain, path)
    cfg = from_dict(state["config"])
    plain = build_model(cfg, int(state["num_classes"]), state.get("in_channels"), pretrained=False)
    md = build_multidomain(cfg, plain, [int(d["num_classes"]) for d in state["domains"]])
    md.load_state_dict(state["model"])
    model = export_domain(md, index).eval()
    return model, domain_state(state, index)


class DomainView(nn.Module):
    """One domain of a :class:`MultiDomainSegmenter`, called like a plain segmenter (no copy):
    what the loop validates each domain with."""

    def __init__(self, model: MultiDomainSegmenter, domain: int) -> None:
        super().__init__()
        self.model, self.domain = model, domain

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, domain=self.domain)  # (B, C_d, H, W)


def domain_record(
    name: str,
    data: Any,
    num_classes: int,
    class_names: Sequence[str],
    ignore_index: int,
    in_channels: int,
) -> dict[str, Any]:
    """The ``domains`` entry of a checkpoint for one domain (JSON-safe); ``data`` is its DataConfig."""
    return {
        "name": name,
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "ignore_index": int(ignore_index),
        "in_channels": int(in_channels),
        "data": dataclasses.asdict(data),
    }


def multidomain_config(
    cfg: RunConfig, extra_roots: Sequence[str | Path], names: Sequence[str] | None = None, **data: Any
) -> RunConfig:
    """``cfg`` (the primary domain in its ``data`` section) with the datasets ``extra_roots`` as
    further domains and ``train.objective`` = ``multidomain``.

    Args:
        cfg: The run's config; its ``multidomain`` section gives lambda, temperature, ...
        extra_roots: One dataset folder per extra domain (folder format; for other formats or
            keys use ``multidomain.domains`` entries).
        names: Their names; default each folder's name.
        **data: ``data`` keys set for every extra domain, e.g. ``labeled_split=None``.

    Raises:
        ConfigError: From :func:`pixcon.config.validate` (duplicate names, bad keys, ...).
    """
    roots = [str(r) for r in extra_roots]
    if not roots:
        raise ConfigError("multidomain_config: give at least one extra dataset folder")
    if names is not None and len(names) != len(roots):
        raise ConfigError(f"multidomain_config: {len(roots)} folders but {len(names)} names")
    entries = [
        {"name": names[i] if names is not None else default_domain_name(root), "root": root, **data}
        for i, root in enumerate(roots)
    ]
    values = to_dict(cfg)
    values["multidomain"] = {**values["multidomain"], "domains": entries}
    values["train"] = {**values["train"], "objective": OBJECTIVE}
    return from_dict(values)


def train_multidomain(
    cfg: RunConfig,
    extra_roots: Sequence[str | Path],
    names: Sequence[str] | None = None,
    resume: bool = False,
    **data: Any,
) -> Path:
    """Multi-domain training of the primary domain of ``cfg`` (its ``data`` section) together
    with the datasets ``extra_roots``; returns ``train.out_dir/last.pt``.

    Everything else comes from ``cfg``: steps, optimizer, seed, output folder, ``train.init_from``
    and the ``multidomain`` section. Evaluate the result on the primary domain with
    ``pixcon.evaluate.evaluate_checkpoint(path, split="test")`` (``domain=NAME`` for another).
    See :func:`multidomain_config` for ``names`` and ``**data``.
    """
    from pixcon.train.loop import run_training

    md_cfg = multidomain_config(cfg, extra_roots, names, **data)
    run_training(md_cfg, resume=resume)
    return Path(md_cfg.train.out_dir) / "last.pt"
