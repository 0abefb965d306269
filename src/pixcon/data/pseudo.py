"""Masks from another source for some samples: pseudo-labels written by ``pixcon pseudo-label``.

``data.pseudo_masks`` names a folder of ``<id>.png`` index masks. For every id that has one, the
reader's mask is replaced by it (before the joint transform, so augmentation treats it like any
mask); other ids keep their own. The pseudo-label round trains on the labeled ids plus the
pseudo-labeled ones, with low-confidence pixels set to ``ignore_index``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixcon.data.base import DatasetView, PairTransform, check_same_size, read_index_mask


def pseudo_mask_path(folder: str | Path, sample_id: str) -> Path:
    """Where the pseudo mask of ``sample_id`` lives (ids may hold ``/``, as Cityscapes' do)."""
    return Path(folder) / f"{sample_id.replace('/', '__')}.png"


class PseudoMasks(DatasetView):
    """A reader (opened without transform) whose masks come from ``folder`` where one exists.

    Args:
        dataset: The format's reader, opened with ``transform=None``.
        folder: Folder of ``<id>.png`` index masks (see :func:`pseudo_mask_path`).
        transform: The joint transform, applied after the mask is chosen.
    """

    def __init__(self, dataset: Any, folder: str | Path, transform: PairTransform | None = None) -> None:
        super().__init__(dataset)
        self.folder, self.transform = Path(folder), transform
        if not self.folder.is_dir():
            if self.folder.exists():
                raise NotADirectoryError(f"data.pseudo_masks: {self.folder} is a file, not a folder of masks")
            raise FileNotFoundError(
                f"data.pseudo_masks: folder {self.folder} not found (run `pixcon pseudo-label`)"
            )
        self._paths = [pseudo_mask_path(self.folder, i) for i in dataset.ids]
        self._has = [p.is_file() for p in self._paths]
        # The ids pseudo-label wrote masks for: none may be missing (it would silently train on its
        # true mask), and no other id may take one (a stale folder must not replace true masks).
        summary = self.folder.parent / "pseudo.json"
        if summary.is_file():
            expected = set(json.loads(summary.read_text()).get("pseudo_ids", []))
            for sid, path, has in zip(dataset.ids, self._paths, self._has, strict=True):
                if (sid in expected) != has:
                    problem = "is missing" if sid in expected else f"exists but {sid} is not in {summary}"
                    raise ValueError(f"data.pseudo_masks: pseudo mask {path} of {sid} {problem}")

    @property
    def num_pseudo(self) -> int:
        """How many samples take their mask from the folder."""
        return sum(self._has)

    def _pseudo(self, index: int) -> Tensor:
        mask = read_index_mask(self._paths[index]).astype(np.int64)  # (H, W)
        return torch.from_numpy(mask)

    def mask(self, index: int) -> Tensor:
        return self._pseudo(index) if self._has[index] else self.dataset.mask(index)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.dataset[index]  # (C, H, W), (H, W)
        if self._has[index]:
            mask = self._pseudo(index)
            check_same_size(
                tuple(image.shape[1:]),
                tuple(mask.shape),
                f"image of {self.dataset.ids[index]}",
                self._paths[index],
            )
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask
