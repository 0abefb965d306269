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

from pixcon.objectives import DomainObjectives, Objective


def _to_float32(value: Any) -> Any:
    return tree_map(lambda v: v.float() if isinstance(v, Tensor) and v.is_floating_point() else v, value)


def _own_method(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is a method that ``model``'s own classes define (not ``nn.Module``'s
    machinery such as ``parameters`` or ``state_dict``): every such method is a forward path."""
    for klass in type(model).__mro__:
        if klass is nn.Module:
            return False
        attr = klass.__dict__.get(name)
        if attr is not None:
            return callable(attr) and not isinstance(attr, (staticmethod, classmethod, property))
    return False


class MixedPrecisionModel:
    """A segmenter whose every method runs under ``autocast()`` and returns float32 tensors.

    Every method its class (or a base class below ``nn.Module``) defines is wrapped, so a forward
    path added to the segmenter later runs in half precision without being listed anywhere.
    ``nn.Module``'s own methods and every other attribute (its modules, ``stride``, ...) are the
    segmenter's, unwrapped. Named tuples come back as such.
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
        if _own_method(self.model, name):
            return lambda *args, **kwargs: self._run(attr, *args, **kwargs)
        return attr


class Trainee(nn.Module):
    """The segmenter and the objective's own parts as one module: one optimizer, one DDP wrapper.

    Its forward is the objective's loss, so a single (DDP) forward covers every parameter used.

    Args:
        model: The segmenter (with per-domain layers for a run of several domains).
        objective: The run's objectives (:class:`~pixcon.objectives.DomainObjectives`: one batch
            per domain), or a single :class:`~pixcon.objectives.Objective` (one batch).
        autocast: The precision's autocast context factory (``fabric.autocast``); None for float32.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective | DomainObjectives,
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
