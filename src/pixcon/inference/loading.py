"""Load a trained network and the description of its data from a checkpoint.

A checkpoint (:mod:`pixcon.checkpoint`) holds the network's weights, the run's config and one
record per domain (dataset) it was trained on. :func:`load_model` rebuilds the network from those
(a multi-domain one with its per-domain layers) and hands back one domain of it as a plain
:class:`~pixcon.models.Segmenter`, with a checkpoint dict that describes that domain as a
single-dataset run (:func:`domain_state`). This is what evaluation, prediction, pseudo-labelling,
diagnostics and the report read; nothing here imports the training code.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from pixcon.checkpoint import load_checkpoint
from pixcon.config import DataConfig, from_dict
from pixcon.data.base import SegmentationDataset
from pixcon.data.registry import open_dataset
from pixcon.data.transforms import eval_transform
from pixcon.models import Segmenter, export_domain, segmenter_from_config, to_multidomain


def domain_names(state: dict[str, Any]) -> list[str]:
    """The names of a checkpoint's domains, the primary first."""
    return [str(d["name"]) for d in state["domains"]]


def is_multidomain(state: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint holds a network of several domains."""
    return len(state["domains"]) > 1


def domain_index(state: dict[str, Any], domain: str | None, path: str | Path = "checkpoint") -> int:
    """Index of ``domain`` (None: the primary, 0) among a checkpoint's domains.

    Raises:
        ValueError: ``domain`` is not one of the checkpoint's domains (the message lists them), or
            the checkpoint is a single-domain one and ``domain`` is given.
    """
    if domain is None:
        return 0
    if not is_multidomain(state):
        raise ValueError(
            f"checkpoint {path} is a single-domain checkpoint; --domain {domain!r} applies to "
            "multi-domain checkpoints only"
        )
    names = domain_names(state)
    if domain not in names:
        raise ValueError(f"checkpoint {path} has no domain {domain!r}; its domains: {names}")
    return names.index(domain)


def domain_state(state: dict[str, Any], index: int) -> dict[str, Any]:
    """A copy of a checkpoint dict that describes its domain ``index`` as a single-domain run: that
    domain's classes, ignore index and data section (``config.data``), ``domains`` of one entry,
    and, for a multi-domain checkpoint, ``domain`` = its name."""
    dom = state["domains"][index]
    config = dict(state["config"])
    config["data"] = dict(dom["data"])
    config["multidomain"] = {**config.get("multidomain", {}), "domains": [], "primary_name": None}
    out = {
        **state,
        "config": config,
        "domains": [dom],
        "num_classes": int(dom["num_classes"]),
        "class_names": list(dom["class_names"]),
        "ignore_index": int(dom["ignore_index"]),
        "in_channels": dom.get("in_channels", state.get("in_channels")),
    }
    if is_multidomain(state):
        out["domain"] = str(dom["name"])
    return out


def network_from_state(state: dict[str, Any]) -> Segmenter:
    """The network of a loaded checkpoint, every domain of it, in eval mode."""
    cfg = from_dict(state["config"])
    counts = [int(d["num_classes"]) for d in state["domains"]]
    model = segmenter_from_config(cfg.model, counts[0], state.get("in_channels"), pretrained=False)
    to_multidomain(model, counts, shared_affine=cfg.multidomain.shared_affine)
    model.load_state_dict(state["model"])
    return model.eval()


def export_domain_weights(state: dict[str, Any], index: int) -> dict[str, torch.Tensor]:
    """The state dict of a loaded checkpoint's domain ``index`` as a plain single-domain network."""
    return export_domain(network_from_state(state), index).state_dict()


def load_model(path: str | Path, domain: str | None = None) -> tuple[Segmenter, dict[str, Any]]:
    """A checkpoint's network for one domain (by name; the primary by default) as a plain
    segmenter in eval mode, and :func:`domain_state` of that domain.

    Raises:
        CheckpointError: The file is missing, corrupt or not a pixcon checkpoint.
        ValueError: ``domain`` is not a domain of the checkpoint (the message lists them), or is
            given for a single-domain checkpoint.
    """
    state = load_checkpoint(path)
    index = domain_index(state, domain, path)
    model = export_domain(network_from_state(state), index).eval()
    return model, domain_state(state, index)


def checkpoint_data(state: dict[str, Any], data_root: str | Path | None = None) -> DataConfig:
    """The data section a (one-domain) checkpoint was trained on, scoring its true masks (no pseudo
    masks); ``data_root`` replaces the dataset folder."""
    data = dataclasses.replace(from_dict(state["config"]).data, pseudo_masks=None)
    return data if data_root is None else dataclasses.replace(data, root=str(data_root))


def check_matches(
    state: dict[str, Any], dataset: SegmentationDataset, root: str | Path, checkpoint: str | Path
) -> None:
    """Raises ``ValueError`` unless ``dataset`` (of folder ``root``) has the checkpoint's classes and
    bands."""
    if dataset.num_classes != int(state["num_classes"]):
        raise ValueError(
            f"{root} has {dataset.num_classes} classes but checkpoint {checkpoint} was trained with "
            f"{state['num_classes']}"
        )
    bands = state.get("in_channels")
    if bands is not None and dataset.in_channels != int(bands):
        raise ValueError(
            f"{root} has {dataset.in_channels}-band images but checkpoint {checkpoint} takes {bands}"
        )


def open_split(
    state: dict[str, Any],
    data: DataConfig,
    split: str,
    image_size: int | None = None,
    checkpoint: str | Path = "checkpoint",
) -> SegmentationDataset:
    """The ``split`` of ``data`` with the evaluation transform, checked against the checkpoint.

    Raises:
        FileNotFoundError: The dataset folder or split is missing.
        ValueError: The dataset's classes or bands do not match the checkpoint.
    """
    if not Path(data.root).exists():
        raise FileNotFoundError(
            f"dataset folder {data.root} of checkpoint {checkpoint} not found; pass its location (--data-root)"
        )
    dataset = open_dataset(data, split=split, transform=eval_transform(image_size))
    check_matches(state, dataset, data.root, checkpoint)
    return dataset


def resolve_device(device: str | torch.device | None, key: str = "--device") -> torch.device:
    """``None`` or ``"auto"``: CUDA if available, else the CPU; otherwise the named device, checked.

    Raises:
        ValueError: Not a device name, or a CUDA/MPS device that is not there (names ``key``).
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{key} {device!r} is not a device (cpu, cuda, cuda:1, mps, auto): {err}") from err
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"{key} {device!r}: torch finds no CUDA GPU here; use cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"{key} {device!r}: there are {count} CUDA GPU(s), numbered 0 to {count - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{key} {device!r}: the MPS backend is not available here; use cpu or auto")
    return dev
