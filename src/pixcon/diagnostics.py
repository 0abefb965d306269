"""``pixcon diagnose``: the spectrum, effective rank and cluster scores of a checkpoint's pixel embeddings.

The math is in :mod:`pixcon.analysis`; this module runs it on a checkpoint and writes
``diagnose.json`` and ``spectrum.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from pixcon.analysis import Source, embedding_diagnostics, sample_pixel_embeddings
from pixcon.inference import checkpoint_data, load_model, open_split, resolve_device
from pixcon.report.figures import save_figure, spectrum_figure

log = logging.getLogger(__name__)


def diagnose_checkpoint(
    checkpoint: str | Path,
    split: str = "test",
    source: Source = "projection",
    num_pixels: int = 2000,
    seed: int = 0,
    data_root: str | Path | None = None,
    image_size: int | None = None,
    max_images: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    domain: str | None = None,
) -> dict[str, Any]:
    """Sample pixel embeddings of a checkpoint on a split and diagnose them.

    ``domain`` picks one domain of a multi-domain checkpoint by name (its batch norm and its
    dataset; the projection head is shared); default: the primary.

    Returns:
        :func:`embedding_diagnostics` plus ``checkpoint``, ``split``, ``source``, ``seed`` (and
        ``domain`` for a multi-domain checkpoint).
    """
    model, state = load_model(checkpoint, domain=domain)
    model.to(resolve_device(device))
    dataset = open_split(state, checkpoint_data(state, data_root), split, image_size, checkpoint)
    z, y = sample_pixel_embeddings(
        model, dataset, num_pixels, source, seed=seed, max_images=max_images, progress=progress
    )
    result = {"checkpoint": str(checkpoint), "split": split, "source": source, "seed": seed}
    if "domain" in state:
        result["domain"] = state["domain"]
    result.update(embedding_diagnostics(z, y, list(state.get("class_names") or [])))
    log.info(
        "%s (%s, %d pixels of %s): effective rank %.2f of D=%d",
        checkpoint,
        source,
        result["num_pixels"],
        split,
        result["effective_rank"],
        result["dim"],
    )
    return result


def write_diagnosis(result: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Writes ``diagnose.json`` and ``spectrum.png`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "diagnose.json", out / "spectrum.png"
    json_path.write_text(json.dumps(result, indent=2, allow_nan=False))
    label = f"{Path(result['checkpoint']).parent.name or result['checkpoint']} ({result['source']})"
    save_figure(spectrum_figure({label: result["singular_values"]}), png_path)
    return [json_path, png_path]
