"""Finds, on the CPU, the operations that would make a CUDA step wait for the host.

``torch.cuda.set_sync_debug_mode("error")`` needs a GPU, and one is lent only now and then
(``bench/gpu_check.py`` runs it then). Most host synchronisations in PyTorch code come from a
short list of operators: reading a value on the host (``.item()``, ``bool(t)``, ``int(t)``, all
``aten._local_scalar_dense``) and operators whose output shape depends on the data (``nonzero``,
boolean-mask indexing, ``unique``, ``masked_select``, ``bincount``, ``repeat_interleave`` without
``output_size``). A :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every operator a
piece of code runs, on any device, backward included, so :class:`HostSyncRecorder` flags those on
CPU tensors, in every ``make test``.

What it cannot see: device-to-host copies (``.cpu()``, ``.tolist()``, ``.numpy()`` of a CUDA
tensor; on a CPU tensor they read memory without an operator) and synchronisations inside a
kernel's C++ code that do not go through the dispatcher. It is a guard against regressions between GPU runs, not a replacement for them.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operators that synchronise on CUDA whatever their arguments (the overload packet's name).
ALWAYS = frozenset(
    {
        "_local_scalar_dense",  # .item(), bool(t), int(t), float(t)
        "is_nonzero",
        "equal",
        "nonzero",
        "argwhere",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
        "bincount",
    }
)
# Indexing synchronises when an index is a boolean (or uint8) mask: it becomes nonzero().
MASK_INDEXED = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


def _is_mask(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in (torch.bool, torch.uint8)


def synchronises(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the aten operator ``func`` applied to ``args`` would wait for the host on CUDA."""
    name = func.overloadpacket.__name__
    if name in ALWAYS:
        return True
    if name in MASK_INDEXED and len(args) > 1:
        return any(_is_mask(i) for i in args[1] if i is not None)
    if name == "repeat_interleave":  # the output length is repeats.sum(), unless output_size is given
        return func._overloadname != "self_int" and kwargs.get("output_size") is None
    return False


class HostSyncRecorder(TorchDispatchMode):
    """Records every operator that would synchronise on CUDA, with the pixcon frame that ran it.

    ``with HostSyncRecorder() as rec: ...`` then ``rec.found``: a list of
    ``"aten.op at file.py:line: code"``, empty when nothing would wait for the host.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if synchronises(func, args, kwargs):
            frames = [
                f
                for f in traceback.extract_stack()
                if ("pixcon" in f.filename or "tests" in f.filename) and f.filename != __file__
            ]
            where = frames[-1] if frames else None
            self.found.append(
                f"{func} at {Path(where.filename).name}:{where.lineno}: {where.line}" if where else str(func)
            )
        return func(*args, **kwargs)
