"""Training images whose masks must not be seen: the unlabeled part of a label-fraction split."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from pixcon.data.base import DatasetView


class HiddenMasks(DatasetView):
    """A dataset view whose samples in ``hidden`` come back with an all-``ignore_index`` mask.

    Self-supervised objectives train on every image of the training split; wrapping the dataset
    guarantees that the labels of the unlabeled images never reach a loss, even one that uses
    masks where they exist. Every other attribute (``ids``, ``class_names``, ...) is the wrapped
    dataset's.
    """

    def __init__(self, dataset: Any, hidden: Iterable[str]) -> None:
        super().__init__(dataset)
        hidden = set(hidden)
        self.hidden = [i in hidden for i in dataset.ids]  # per index

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.dataset[index]  # (C, H, W), (H, W)
        if self.hidden[index]:
            mask = torch.full_like(mask, self.dataset.ignore_index)
        return image, mask

    def mask(self, index: int) -> Tensor:
        mask = self.dataset.mask(index)
        return torch.full_like(mask, self.dataset.ignore_index) if self.hidden[index] else mask
