"""The module the loop optimises: segmenter + objective, with losses computed in float32.

Under mixed precision (``bf16-mixed``, ``16-mixed``) the network runs in half precision, but
similarities divided by a temperature of 0.07 lose too much in bf16 (8 bits of mantissa). So the
objective runs with autocast off, and sees the segmenter through :class:`MixedPrecisionModel`:
each call to it re-enters the precision's autocast and hands back float32 outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from pixcon.objectives import Objective

# Methods that run the network (and so get autocast and float32 outputs): the Segmenter's, and
# MultiDomainSegmenter's (which take ``domain=``).
_FORWARD_METHODS = (
    "forward",
    "project",
    "forward_both",
    "features",
    "decoder_cells",
    "project_rows",
    "forward_all",
    "forward_with_image",
    "embed_image",
)


def _to_float32(value: Any) -> Any:
    return tree_map(lambda v: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v, value)


class MixedPrecisionModel:
    """A segmenter whose forward methods run under ``autocast()`` and return float32 tensors.

    Every other attribute is the segmenter's own (its modules, ``stride``, ...). Works for a
    :class:`~pixcon.models.Segmenter` and a
    :class:`~pixcon.models.multidomain.MultiDomainSegmenter` (named tuples come back as such).
    """

    def __init__(self, model: nn.Module, autocast: Callable[[], contextlib.AbstractContextManager]) -> None:
        self.model, self.autocast = model, autocast

    def _run(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self.autocast():
            out = method(*args, **kwargs)
        return _to_float32(out)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._run(self.model, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.model, name)
        if name in _FORWARD_METHODS:
            return lambda *args, **kwargs: self._run(attr, *args, **kwargs)
        return attr


class Trainee(nn.Module):
    """The segmenter and the objective's own parts as one module: one optimizer, one DDP wrapper.

    Its forward is the objective's loss, so a single (DDP) forward covers every parameter used.

    Args:
        model: The segmenter (a ``MultiDomainSegmenter`` for the ``multidomain`` objective).
        objective: The training objective.
        autocast: The precision's autocast context factory (``fabric.autocast``); None for float32.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        autocast: Callable[[], contextlib.AbstractContextManager] | None = None,
    ) -> None:
        super().__init__()
        self.model, self.objective = model, objective
        self._autocast = autocast

    def forward(self, batch: Any) -> dict[str, Tensor]:
        if self._autocast is None:
            return self.objective(self.model, batch)
        device = next(self.model.parameters()).device
        # Off for the losses; MixedPrecisionModel turns it back on for the network only.
        with torch.autocast(device_type=device.type, enabled=False):
            return self.objective(MixedPrecisionModel(self.model, self._autocast), batch)
