"""What the classification and segmentation condensers share: the matching schedule's settings,
seeds, resumable checkpoints of the synthetic set and the PNG grid of its samples.

The loop structure is that of DC's Algorithm 1: ``iterations`` (K) times a freshly initialised
network; on each, ``matching_steps`` (T) updates of the synthetic set by gradient matching, and
between two updates ``net_steps`` (varsigma_theta) of training the network on the synthetic set.
Everything random in outer iteration k draws from generators seeded by ``(seed, k)``
(`derive_seed`), so a run resumed from the checkpoint written after iteration k continues exactly
as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.utils import make_grid
from tqdm.auto import tqdm

from pixcon.condense.options import (
    DEFAULT_STRATEGY,
    INITS,
    PAPER_ITERATIONS,
    PAPER_WARMUP,
    check_rule,
    check_strategy,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=nn.Module)

FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
GRID_NAME = "synthetic_grid.png"


@dataclass(frozen=True)
class MatchingConfig:
    """The condensation loop (DC Algorithm 1) and the synthetic-set optimiser.

    Attributes:
        method: ``"dc"`` (class-wise matching) or ``"dcc"`` (contrastive signals; see
            :mod:`pixcon.condense.matching`).
        iterations: K, outer iterations: freshly initialised networks (the papers: 1000).
        matching_steps: T, synthetic-set updates per network.
        net_steps: Network training between two updates: epochs over the synthetic set
            (classification, the papers' varsigma_theta) or SGD steps (segmentation).
        warmup_iterations: DCC's outer warm-up K_w (250 in the official code): ``dc`` matching
            while the iteration is below it and the step below `warmup_steps`.
        warmup_steps: DCC's inner warm-up T_w (10 in the official code).
        lr_images: SGD learning rate of the synthetic images (0.1).
        momentum_images: SGD momentum of the synthetic images (0.5).
        lr_net: SGD learning rate of the network trained on the synthetic set (0.01).
        init: ``"real"`` (randomly chosen real samples; DSA, DCC) or ``"noise"`` (DC's default).
        dsa: Differentiable Siamese augmentation in matching and in network training.
        dsa_strategy: DSA families drawn from (:data:`pixcon.condense.dsa.DSA_FAMILIES`).
        seed: Base seed of every random draw.
        checkpoint_every: Write the checkpoint every this many iterations (and at the end).
    """

    method: str = "dcc"
    iterations: int = PAPER_ITERATIONS
    matching_steps: int = 10
    net_steps: int = 50
    warmup_iterations: int = PAPER_WARMUP[0]
    warmup_steps: int = PAPER_WARMUP[1]
    lr_images: float = 0.1
    momentum_images: float = 0.5
    lr_net: float = 0.01
    init: str = "real"
    dsa: bool = False
    dsa_strategy: tuple[str, ...] = DEFAULT_STRATEGY
    seed: int = 0
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        check_rule(self.method)
        check_strategy(self.dsa_strategy)
        for name in ("iterations", "matching_steps", "checkpoint_every"):
            _check_int(name, getattr(self, name), 1)
        for name in ("net_steps", "warmup_iterations", "warmup_steps", "seed"):
            _check_int(name, getattr(self, name), 0)
        if not self.lr_images > 0 or not self.lr_net > 0:
            raise ValueError(f"lr_images and lr_net must be > 0, got {self.lr_images}, {self.lr_net}")
        if not 0 <= self.momentum_images < 1:
            raise ValueError(f"momentum_images must be in [0, 1), got {self.momentum_images}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {list(INITS)}, got {self.init!r}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (e.g. ``(seed, iteration)``), mixed by numpy's SeedSequence."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by `derive_seed` of the keys."""
    return torch.Generator().manual_seed(derive_seed(*keys))


@contextlib.contextmanager
def global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seeds torch's global generators (CPU, and `device` if CUDA) for the block and restores them
    after: whatever draws from them inside (dropout in a segmentation head) depends on `seed` only."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def seeded(build: Callable[..., M], seed: int, /, *args: Any, **kwargs: Any) -> M:
    """``build(*args, **kwargs)`` with torch's global generator set to `seed`, then restored: the
    initial weights depend on `seed` only, and no other random stream is disturbed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(*args, **kwargs)


def has_batchnorm(net: nn.Module) -> bool:
    """Whether `net` has a batch-norm layer (whose statistics `freeze_batchnorm` sets)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


def freeze_batchnorm(net: nn.Module, real: Tensor) -> None:
    """For networks with batch norm: set every BN layer's statistics to those of a real batch and
    freeze them (eval mode), as the DC code does before matching (a synthetic batch of a few
    images gives unstable statistics). The statistics are the batch's exactly (momentum None for
    that one pass), not a running average. Networks without BN are left alone."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        net(real)
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
    net.eval()


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples and paths as plain JSON types (dicts, lists, str)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def save_state(state: dict[str, Any], path: str | Path) -> Path:
    """Writes a checkpoint atomically (temporary file, fsync, rename): a crash leaves the old file
    or the new one, never half of one. Loadable with ``torch.load(..., weights_only=True)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state(path: str | Path, task: str) -> dict[str, Any]:
    """Reads a checkpoint written by `save_state` for `task`.

    Raises:
        FileNotFoundError: No file.
        ValueError: Not readable, of another task or of a newer format (the message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"condensation checkpoint {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ...: torch raises several types
        raise ValueError(f"condensation checkpoint {path} is corrupt ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("task") != task:
        found = state.get("task") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path} is not a {task} condensation checkpoint (task: {found!r})")
    if int(state.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path} has format {state['format_version']}, newer than {FORMAT_VERSION}")
    return state


# Settings that may change between a run and its resumption: extending the run, or saving more often.
RESUMABLE_CHANGES = frozenset({"matching.iterations", "matching.checkpoint_every"})


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], path: Path) -> None:
    """Raises ValueError naming every setting that differs between a checkpoint's config and the
    current one, other than `RESUMABLE_CHANGES` (both as `to_jsonable` dicts)."""
    a, b = _flatten(saved), _flatten(current)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        listing = "; ".join(f"{k}: checkpoint {a.get(k)!r}, now {b.get(k)!r}" for k in diff)
        raise ValueError(
            f"cannot resume from {path}: the settings differ ({listing}); "
            "use the same settings (only matching.iterations may grow) or another output folder"
        )


def write_grid(images: Tensor, path: str | Path, nrow: int, padding: int = 2) -> Path:
    """Saves images (N, C, H, W) in [0, 1] (clipped) as one PNG grid, `nrow` images per row."""

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images (N, 1 or 3, H, W), got {tuple(images.shape)}")
    grid = make_grid(
        images.detach().float().cpu().clamp(0, 1), nrow=max(1, nrow), padding=padding
    )  # (3, H', W')
    array = (grid.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)  # (H', W', 3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_json(data: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2) + "\n")
    return path


def progress_bar(total: int, initial: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over outer iterations (disabled: no output at all)."""

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


@dataclass
class History:
    """Per outer iteration: the mean matching loss, the wall-clock seconds and the CPU seconds of
    this process (all threads; on a shared machine the CPU time is the steadier measure)."""

    loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

    def extend_from(self, state: Mapping[str, Iterable[float]]) -> None:
        self.loss = [float(v) for v in state.get("loss", [])]
        self.seconds = [float(v) for v in state.get("seconds", [])]
        self.cpu_seconds = [float(v) for v in state.get("cpu_seconds", [])]


def resume_synthetic(
    ckpt_path: Path,
    task: str,
    config: Mapping[str, Any],
    syn: Tensor,
    opt: torch.optim.Optimizer,
    resume: bool,
    iterations: int,
) -> tuple[History, int]:
    """The synthetic set's history and the iteration to start from: a fresh start without a
    checkpoint at ``ckpt_path``; with one, ``syn`` and ``opt`` restored from it (``resume`` must be
    set and the settings must match, see :func:`check_resumable`).

    Raises:
        FileExistsError: A checkpoint exists and ``resume`` is False.
        ValueError: The checkpoint was written with other settings (from :func:`check_resumable`).
    """
    history = History()
    if not ckpt_path.exists():
        return history, 0
    if not resume:
        raise FileExistsError(
            f"{ckpt_path} exists: pass resume=True (--resume) to continue it, or choose another output folder"
        )
    state = load_state(ckpt_path, task)
    check_resumable(state["config"], config, ckpt_path)
    with torch.no_grad():
        syn.copy_(state["images"].to(syn.device))
    opt.load_state_dict(state["optimizer"])
    history.extend_from(state["history"])
    start = int(state["iteration"])
    log.info("resuming %s from iteration %d of %d", ckpt_path, start, iterations)
    return history, start
