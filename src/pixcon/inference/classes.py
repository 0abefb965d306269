"""Class colours of a checkpoint's dataset, for masks, overlays and the report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np

from pixcon.config import from_dict
from pixcon.data.registry import format_palette
from pixcon.data.voc import voc_colormap

RGB = tuple[int, int, int]


def default_palette(n: int) -> list[RGB]:
    """``n`` distinct colours: matplotlib's tab20 for up to 20 classes, the VOC colormap beyond."""
    if n <= 20:
        cmap = matplotlib.colormaps["tab20" if n > 10 else "tab10"]
        return [tuple(round(255 * float(v)) for v in cmap(i)[:3]) for i in range(n)]  # type: ignore[misc]
    return [voc_colormap(256)[i % 256] for i in range(n)]


def checkpoint_palette(state: dict[str, Any]) -> list[RGB] | None:
    """The class colours of a (one-domain) checkpoint's dataset, or None if they are unknown.

    A ``palette`` entry of the checkpoint wins; otherwise its data format's palette
    (:func:`pixcon.data.registry.format_palette`: the built-in formats' own, a folder dataset's
    classes file if it can still be read).
    """
    if state.get("palette"):
        return [tuple(int(v) for v in c) for c in state["palette"]]  # type: ignore[misc]
    palette = format_palette(from_dict(state["config"]).data)
    return None if palette is None else [(int(r), int(g), int(b)) for r, g, b in palette]


def class_colors(palette: Sequence[Sequence[int]] | None, num_classes: int) -> np.ndarray:
    """(K, 3) uint8 colours: ``palette`` if it covers every class, else :func:`default_palette`."""
    if palette is None or len(palette) < num_classes:
        palette = default_palette(num_classes)
    return np.asarray(palette[:num_classes], dtype=np.uint8).reshape(num_classes, 3)
