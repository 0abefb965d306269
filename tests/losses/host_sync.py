"""Finds, on the CPU, the operators that would make a CUDA step wait for the host.

``torch.cuda.set_sync_debug_mode("error")`` needs a GPU, and one is lent only now and then
(``bench/gpu_check.py`` runs it then). Most host synchronisations in PyTorch code come from
operators that read a value on the host (``.item()``, ``bool(t)``, ``int(t)``: all
``aten._local_scalar_dense``; ``equal``, ``allclose``) or whose output shape depends on the data
(``nonzero``, boolean-mask indexing, ``unique``, ``masked_select``, ``bincount``,
``repeat_interleave`` without ``output_size``). PyTorch tags most of them
(``torch.Tag.data_dependent_output``, ``torch.Tag.dynamic_output_shape``). A
:class:`~torch.utils._python_dispatch.TorchDispatchMode` sees the operators a piece of code calls,
on any device, backward included, so :class:`HostSyncRecorder` flags those on CPU tensors, in
every ``make test``.

What it cannot see: device-to-host copies (``.cpu()``, ``.tolist()``, ``.numpy()`` of a CUDA
tensor; on a CPU tensor they read memory without an operator), the operators an operator's own
kernel calls (the mode sees the outermost one only, e.g. ``isin``'s sorting branch), and
composite operators before they decompose (``argwhere`` is seen as ``nonzero``). It is a guard
against regressions between GPU runs, not a replacement for them.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pixcon

SYNC_TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)
# Untagged operators that synchronise on CUDA (the overload packet's name).
UNTAGGED = frozenset({"equal", "allclose", "is_nonzero", "histc", "multinomial", "unique_dim_consecutive"})
# Operators that synchronise only for some arguments (see _needs_host); index_put is untagged.
REFINED = frozenset({"index", "index_put", "index_put_", "_index_put_impl_", "repeat_interleave", "one_hot"})
# Where the recorder looks for the line that called an operator: pixcon and the tests.
ROOTS = (str(Path(pixcon.__file__).resolve().parent), str(Path(__file__).resolve().parents[1]))


def _is_mask(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype in (torch.bool, torch.uint8)


def _needs_host(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if name == "index":  # integer indices keep their shape; a mask becomes nonzero()
        return any(_is_mask(i) for i in args[1] if i is not None)
    if name in ("index_put", "index_put_", "_index_put_impl_"):
        masks = [i for i in args[1] if i is not None and _is_mask(i)]
        accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
        # t[mask] = 0.0: one mask and a one-element (host) value is a masked_fill on CUDA
        scalar_fill = len(args[1]) == 1 and len(masks) == 1 and args[2].numel() == 1 and not accumulate
        return bool(masks) and not scalar_fill
    if name == "repeat_interleave":  # the output length is repeats.sum(), unless output_size is given
        return kwargs.get("output_size") is None
    if name == "one_hot":  # num_classes=-1 reads the largest label
        return (args[1] if len(args) > 1 else kwargs.get("num_classes", -1)) == -1
    return True


def synchronises(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the aten operator ``func`` applied to ``args`` would wait for the host on CUDA."""
    name = func.overloadpacket.__name__
    if name in REFINED:
        return _needs_host(name, args, kwargs)
    return name in UNTAGGED or any(tag in func.tags for tag in SYNC_TAGS)


class HostSyncRecorder(TorchDispatchMode):
    """Records every operator that would synchronise on CUDA, with the pixcon or test line that ran it.

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
                if str(Path(f.filename).resolve()).startswith(ROOTS)
                and Path(f.filename).name != "host_sync.py"
            ]
            where = frames[-1] if frames else None
            self.found.append(
                f"{func} at {Path(where.filename).name}:{where.lineno}: {where.line}" if where else str(func)
            )
        return func(*args, **kwargs)
