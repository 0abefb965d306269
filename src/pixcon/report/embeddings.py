"""Pixel embeddings before and after pretraining, and their t-SNE maps.

*Before* is a freshly initialised network of the checkpoint's config, seeded with its
``train.seed`` (what pretraining started from); *after* is the checkpoint itself. Both are sampled
on the same pixels (:func:`pixcon.analysis.sample_pixel_embeddings` with one seed).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.manifold import TSNE
from torch import Tensor

from pixcon.analysis import Source, sample_pixel_embeddings
from pixcon.config import from_dict
from pixcon.data.base import SegmentationDataset
from pixcon.inference import load_model
from pixcon.models import Segmenter, segmenter_from_config

log = logging.getLogger(__name__)


@dataclass
class EmbeddingSet:
    """Sampled pixel embeddings of one network: z (N, D) float32, labels (N,) int64."""

    label: str
    z: Tensor
    labels: Tensor


def fresh_model(state: dict, checkpoint: str | Path = "checkpoint") -> Segmenter:
    """A newly initialised network of the checkpoint's config, seeded with its ``train.seed``.

    The global RNG state is left as it was. If the config names local encoder weights that no
    longer exist, the encoder starts random (with a warning).
    """
    cfg = from_dict(state["config"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        try:
            model = segmenter_from_config(
                cfg.model, int(state["num_classes"]), state.get("in_channels"), pretrained=False
            )
        except FileNotFoundError as err:
            log.warning("%s: %s; the 'before' network starts from random weights", checkpoint, err)
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder_weights=None))
            torch.manual_seed(cfg.train.seed)
            model = segmenter_from_config(
                cfg.model, int(state["num_classes"]), state.get("in_channels"), pretrained=False
            )
    return model.eval()


def before_after(
    checkpoint: str | Path,
    dataset: SegmentationDataset,
    source: Source = "projection",
    num_pixels: int = 2000,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = False,
) -> list[EmbeddingSet]:
    """Embeddings of the same sampled pixels from a fresh network and from ``checkpoint``."""
    trained, state = load_model(checkpoint)
    out = []
    for label, model in (("before (fresh init)", fresh_model(state, checkpoint)), ("after", trained)):
        model.to(device or torch.device("cpu"))
        z, y = sample_pixel_embeddings(model, dataset, num_pixels, source, seed=seed, progress=progress)
        out.append(EmbeddingSet(label, z, y))
    return out


def tsne_2d(z: Tensor | np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE of embeddings (N, D) to (N, 2) (scikit-learn, PCA initialisation, seeded).

    Raises:
        ValueError: Fewer than 5 points.
    """
    x = z.detach().cpu().numpy() if isinstance(z, Tensor) else np.asarray(z)
    n = x.shape[0]
    if n < 5:
        raise ValueError(f"t-SNE needs at least 5 points, got {n}")
    perplexity = float(min(30.0, (n - 1) / 3))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(x.astype(np.float32))  # (N, 2)
