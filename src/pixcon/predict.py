"""Inference on image files: sliding-window prediction with overlap blending, masks and overlays.

Images larger than the window (e.g. 6000 x 6000 ISPRS Potsdam tiles) are cut into overlapping
tiles. Each tile's softmax probabilities are weighted by a smooth window (a separable Gaussian,
largest at the tile centre, positive everywhere) and accumulated; the result is the weighted mean
per pixel, so tile borders, where the network sees little context, count least. The image is
padded by reflection before tiling so that its own border pixels lie inside tiles, not on their
edges::

    image (C, H, W) -> reflect-pad by m = (S - step) / 2 -> tiles (S, S) every step = S (1 - overlap)
      -> softmax(model(tile)) * w (K, S, S), w (S, S) -> sum / sum(w) -> crop m -> probs (K, H, W)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from tqdm.auto import tqdm

from pixcon.data.base import open_image
from pixcon.data.isprs import read_tiff
from pixcon.inference import checkpoint_palette, class_colors, load_model, resolve_device

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")
RGB = tuple[int, int, int]


def window_weight(size: int, sigma_scale: float = 0.25) -> Tensor:
    """Separable Gaussian blending weight, 1 at the centre, ``exp(-4)`` at the corners.

    Args:
        size: Window side S.
        sigma_scale: Standard deviation as a fraction of S.

    Returns:
        float32, shape (S, S), strictly positive.
    """
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2  # (S,)
    g = torch.exp(-0.5 * (x / (sigma_scale * size)) ** 2)  # (S,)
    return (g[:, None] * g[None, :]).float()  # (S, S)


def tile_starts(length: int, window: int, step: int) -> list[int]:
    """Tile offsets along one axis of ``length >= window``: every ``step``, the last flush with the end."""
    if length < window:
        raise ValueError(f"length {length} is shorter than the window {window}")
    starts = list(range(0, length - window + 1, step))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def check_window(model: nn.Module, window: int, overlap: float) -> int:
    """Validates window and overlap; returns the step between tiles.

    Raises:
        ValueError: The window is not a positive multiple of the model's stride, or overlap is
            outside [0, 1) (the message names the value).
    """
    stride = int(getattr(model, "stride", 32))
    if window < stride or window % stride:
        lower = max(stride, window // stride * stride)
        raise ValueError(
            f"window {window} is not a multiple of {stride}, the model's output stride; use {lower} or {lower + stride}"
        )
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap {overlap} must be in [0, 1)")
    return max(1, round(window * (1.0 - overlap)))


def _pad(image: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """(C, H, W) -> (C, H + top + bottom, W + left + right); reflection where it fits, else replicate."""
    if not (top or bottom or left or right):
        return image
    h, w = image.shape[-2:]
    fits = max(top, bottom) < h and max(left, right) < w
    return F.pad(image[None], (left, right, top, bottom), mode="reflect" if fits else "replicate")[0]


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.inference_mode()
def sliding_window(
    model: nn.Module,
    image: Tensor,
    window: int,
    overlap: float = 0.25,
    batch_size: int = 4,
    progress: bool = False,
) -> Tensor:
    """Class probabilities of a large image from overlapping, Gaussian-weighted tiles.

    Args:
        model: Maps (B, C, S, S) in [0, 1] to logits (B, K, S, S); used in eval mode.
        image: (C, H, W) float in [0, 1], any size (smaller images are padded up to the window).
        window: Tile side S, a multiple of the model's stride.
        overlap: Fraction of S shared by neighbouring tiles, in [0, 1).
        batch_size: Tiles per forward pass.
        progress: Show a progress bar over tiles.

    Returns:
        float32 (K, H, W) on the CPU; probabilities (they sum to 1 over K).
    """

    step = check_window(model, window, overlap)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    h, w = image.shape[-2:]
    margin = (window - step) // 2
    # Border pixels sit `margin` inside the padded image; sides shorter than S are padded up to S.
    extra_h, extra_w = max(0, window - (h + 2 * margin)), max(0, window - (w + 2 * margin))
    padded = _pad(image, margin, margin + extra_h, margin, margin + extra_w)  # (C, H', W')
    ph, pw = padded.shape[-2:]
    corners = [(y, x) for y in tile_starts(ph, window, step) for x in tile_starts(pw, window, step)]
    weight = window_weight(window)  # (S, S)
    device = _device(model)
    was_training = model.training
    model.eval()
    acc: Tensor | None = None  # (K, H', W')
    norm = torch.zeros(ph, pw)  # (H', W')
    bar = tqdm(total=len(corners), desc="tiles", disable=not progress, leave=False, unit="tile")
    for i in range(0, len(corners), batch_size):
        batch = corners[i : i + batch_size]
        tiles = torch.stack([padded[:, y : y + window, x : x + window] for y, x in batch])  # (b, C, S, S)
        probs = model(tiles.to(device)).float().softmax(dim=1).cpu()  # (b, K, S, S)
        if acc is None:
            acc = torch.zeros(probs.shape[1], ph, pw)
        for (y, x), p in zip(batch, probs, strict=True):
            acc[:, y : y + window, x : x + window] += p * weight  # (K, S, S)
            norm[y : y + window, x : x + window] += weight
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    assert acc is not None
    out = acc / norm  # (K, H', W'); norm > 0 everywhere: every pixel lies in a tile, w > 0
    return out[:, margin : margin + h, margin : margin + w].contiguous()  # (K, H, W)


@torch.inference_mode()
def predict_image(
    model: nn.Module,
    image: Tensor,
    window: int | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    progress: bool = False,
) -> Tensor:
    """Class probabilities of one image: one forward pass if it fits the window, else :func:`sliding_window`.

    Args:
        model: Maps (B, C, H, W) in [0, 1] to logits (B, K, H, W).
        image: (C, H, W) float in [0, 1].
        window: Tile side; None: always one forward pass of the whole image.
        overlap, batch_size, progress: See :func:`sliding_window`.

    Returns:
        float32 (K, H, W) on the CPU.
    """
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    bands = getattr(model, "in_channels", None)
    if bands is not None and image.shape[0] != bands:
        raise ValueError(f"image has {image.shape[0]} bands but the model takes {bands}")
    if window is not None:
        check_window(model, window, overlap)
        if max(image.shape[-2:]) > window:
            return sliding_window(model, image, window, overlap, batch_size, progress)
    was_training = model.training
    model.eval()
    probs = model(image[None].to(_device(model))).float().softmax(dim=1)[0].cpu()  # (K, H, W)
    model.train(was_training)
    return probs


def _unit_float(array: np.ndarray, path: Path) -> Tensor:
    """(H, W, C) uint8/uint16/float -> (C, H, W) float32 in [0, 1]."""
    if array.dtype == np.uint8:
        scale = 255.0
    elif array.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(array.dtype, np.floating):
        scale = 1.0
    else:
        raise ValueError(f"image {path} has dtype {array.dtype}; expected uint8, uint16 or float")
    # PIL-backed arrays and memory maps are read-only; torch wants writable memory.
    t = torch.from_numpy(np.require(array, requirements=["C", "W"])).permute(2, 0, 1)  # (C, H, W)
    return t.float().div_(scale)


def read_image(path: str | Path, in_channels: int = 3) -> Tensor:
    """Reads an image file as (C, H, W) float32 in [0, 1].

    PNG/JPEG go through PIL (converted to RGB for 3-band models, as the dataset readers do);
    TIFF through tifffile, with any number of bands (interleaved or planar).

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Its band count is not ``in_channels``, or it cannot be decoded (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        try:
            array = read_tiff(path)  # (H, W, C)
        except OSError as err:
            raise ValueError(str(err)) from err
    else:
        try:
            img = open_image(path)
        except OSError as err:
            raise ValueError(str(err)) from err
        if in_channels == 3 or img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        elif in_channels == 1 and img.mode != "L":
            img = img.convert("L")
        array = np.asarray(img)
        if array.ndim == 2:
            array = array[..., None]  # (H, W, 1)
    if array.shape[-1] != in_channels:
        raise ValueError(
            f"{path} has {array.shape[-1]} band(s) but the checkpoint takes {in_channels}"
            + (" (use a multi-band TIFF)" if in_channels > 3 else "")
        )
    return _unit_float(array, path)


def colorize(mask: np.ndarray, colors: np.ndarray, ignore_index: int | None = 255) -> np.ndarray:
    """Class ids (H, W) -> (H, W, 3) uint8; ignored or out-of-range ids are black."""
    mask = np.asarray(mask)
    valid = (mask >= 0) & (mask < len(colors))
    if ignore_index is not None:
        valid &= mask != ignore_index
    out = np.zeros((*mask.shape, 3), dtype=np.uint8)  # (H, W, 3)
    out[valid] = colors[mask[valid]]
    return out


def to_rgb(image: Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W, 3) uint8: the first three bands, or grey for one band."""
    x = image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1)  # (3, H, W)
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


def overlay(image: Tensor, mask: np.ndarray, colors: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over the image: (C, H, W), (H, W) -> (H, W, 3) uint8."""
    rgb = to_rgb(image).astype(np.float32)  # (H, W, 3)
    blended = (1 - alpha) * rgb + alpha * colorize(mask, colors).astype(np.float32)
    return blended.round().astype(np.uint8)


def save_mask(mask: np.ndarray, path: str | Path, colors: np.ndarray) -> None:
    """Writes class ids (H, W): a palette PNG for up to 256 classes, else a 16-bit greyscale PNG."""
    if len(colors) <= 256:
        img = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette makes it P
        flat = colors.reshape(-1).tolist()
        img.putpalette(flat + [0] * (768 - len(flat)))
    else:
        img = Image.fromarray(mask.astype(np.uint16))
    img.save(path)


def predict_files(
    checkpoint: str | Path,
    images: Sequence[str | Path],
    out_dir: str | Path,
    window: int | None = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    progress: bool = False,
    domain: str | None = None,
) -> list[tuple[Path, Path]]:
    """Predicts each image with a checkpoint and writes ``<stem>_mask.png`` and ``<stem>_overlay.png``.

    Every input is checked (exists, right band count) before the model runs. ``domain`` picks one
    domain of a multi-domain checkpoint by name (its classes and colours; default: the primary).

    Returns:
        ``(mask path, overlay path)`` per image, in input order.
    """
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("no input images given")
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {p}")
    model, state = load_model(checkpoint, domain=domain)
    model.to(resolve_device(device))
    if window is not None:
        check_window(model, window, overlap)
    colors = class_colors(checkpoint_palette(state), int(state["num_classes"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems: dict[str, int] = {}
    written = []
    for path in tqdm(paths, desc="predict", disable=not progress or len(paths) < 2, unit="image"):
        image = read_image(path, model.in_channels)  # (C, H, W)
        probs = predict_image(model, image, window, overlap, batch_size, progress)  # (K, H, W)
        pred = probs.argmax(dim=0).numpy()  # (H, W)
        n = stems.get(path.stem, 0)
        stems[path.stem] = n + 1
        stem = path.stem if n == 0 else f"{path.stem}-{n}"
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        save_mask(pred, mask_path, colors)
        Image.fromarray(overlay(image, pred, colors)).save(overlay_path)
        log.info("%s (%dx%d) -> %s, %s", path, image.shape[2], image.shape[1], mask_path, overlay_path)
        written.append((mask_path, overlay_path))
    return written
