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

from pixcon.data.images import (
    WIDE_MODES,
    depth_name,
    image_to_tensor,
    open_image,
    read_header,
    read_rgb,
    read_tiff,
)
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


def read_image(path: str | Path, in_channels: int = 3, value_range: Sequence[float] | None = None) -> Tensor:
    """Reads an image file as (C, H, W) float32, scaled as the checkpoint's training data was.

    PNG/JPEG (and 8-bit TIFF) for 3-band models are read as the dataset readers read them
    (:func:`pixcon.data.images.read_rgb`: RGB, a 16-bit greyscale slice repeated to 3 channels);
    other TIFFs through tifffile, with any number of bands (interleaved or planar). Values are
    scaled by :func:`pixcon.data.images.image_to_tensor`: 8-bit by 1/255, deeper images by
    ``value_range`` (the checkpoint's ``data.value_range``, measured at training start), never
    clipped.

    Raises:
        FileNotFoundError: The file does not exist.
        IsADirectoryError: ``path`` is a folder.
        ValueError: Its band count is not ``in_channels``, it cannot be decoded, or it is deeper
            than 8 bits and no value range is known (names the file).
    """
    path = _require_image(Path(path))
    try:
        tiff = path.suffix.lower() in TIFF_SUFFIXES
        if in_channels == 3 and not (tiff and _tiff_bands(path) not in (1, 3)):
            array = read_rgb(path)  # (H, W, 3), as the folder, VOC and Cityscapes readers
        elif tiff:
            array = read_tiff(path)  # (H, W, C)
        else:
            img = open_image(path)
            if img.mode in ("P", "CMYK", "YCbCr", "LAB", "HSV"):
                img = img.convert("RGB")
            elif in_channels == 1 and img.mode not in ("L", *WIDE_MODES):
                img = img.convert("L")
            array = np.asarray(img)
            if array.ndim == 2:
                array = array[..., None]  # (H, W, 1)
    except OSError as err:  # unreadable or truncated: a problem of this input, not of a path
        raise ValueError(str(err)) from err
    if array.shape[-1] != in_channels:
        raise ValueError(
            f"{path} has {array.shape[-1]} band(s) but the checkpoint takes {in_channels}"
            + (" (use a multi-band TIFF)" if in_channels > 3 else "")
        )
    if array.dtype != np.uint8 and value_range is None:
        raise ValueError(
            f"image {path} is {depth_name(array.dtype)}, not 8-bit, and the checkpoint has no "
            f"data.value_range (it was trained on 8-bit images, or before value ranges existed); "
            "predict images of the depth it was trained on"
        )
    return image_to_tensor(np.ascontiguousarray(array), value_range, source=path)  # (C, H, W)


def _require_image(path: Path) -> Path:
    if path.is_dir():
        raise IsADirectoryError(
            f"image {path} is a folder, not a file (give the image files, e.g. {path}/*.png)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return path


def _tiff_bands(path: Path) -> int:
    """Bands of a TIFF from its header (3 when it cannot be read: the RGB reader then reports it)."""
    try:
        return read_header(path).channels
    except OSError:
        return 3


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
    strict: bool = True,
    skipped: list[tuple[Path, str]] | None = None,
) -> list[tuple[Path, Path]]:
    """Predicts each image with a checkpoint and writes ``<stem>_mask.png`` and ``<stem>_overlay.png``.

    Images are scaled as the checkpoint's training images were (its ``data.value_range`` for
    images deeper than 8 bits, see :func:`read_image`). ``domain`` picks one domain of a
    multi-domain checkpoint by name (its classes and colours; default: the primary).

    Args:
        strict: Stop at the first image that is missing, a folder, unreadable, or of the wrong
            band count or depth (every path is checked before the model is loaded). Otherwise
            such an image is skipped with a warning and recorded in ``skipped``, and the others
            are written; only when none can be written is it an error.
        skipped: Receives ``(path, reason)`` of every skipped image (``strict=False``).

    Returns:
        ``(mask path, overlay path)`` of every image written, in input order.

    Raises:
        ValueError, FileNotFoundError, IsADirectoryError: No image given, a bad image with
            ``strict``, or no image that could be written (the message names the file).
    """
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("no input images given")
    bad: list[tuple[Path, str]] = skipped if skipped is not None else []
    usable = []
    for p in paths:
        try:
            _require_image(p)
        except OSError as err:
            if strict or len(paths) == 1:
                raise
            _skip(bad, p, err)
            continue
        usable.append(p)
    if not usable:
        raise FileNotFoundError(f"none of the {len(paths)} images can be read: " + _reasons(bad))
    dev = resolve_device(device)
    model, state = load_model(checkpoint, domain=domain)
    model.to(dev)
    if window is not None:
        check_window(model, window, overlap)
    colors = class_colors(checkpoint_palette(state), int(state["num_classes"]))
    value_range = state["config"].get("data", {}).get("value_range")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stems: dict[str, int] = {}
    written = []
    for path in tqdm(usable, desc="predict", disable=not progress or len(usable) < 2, unit="image"):
        try:
            image = read_image(path, model.in_channels, value_range)  # (C, H, W)
            probs = predict_image(model, image, window, overlap, batch_size, progress)  # (K, H, W)
        except (OSError, ValueError, RuntimeError) as err:  # this input's problem; writing errors are not
            if strict or len(paths) == 1:
                raise
            _skip(bad, path, err)
            continue
        pred = probs.argmax(dim=0).numpy()  # (H, W)
        n = stems.get(path.stem, 0)
        stems[path.stem] = n + 1
        stem = path.stem if n == 0 else f"{path.stem}-{n}"
        mask_path, overlay_path = out / f"{stem}_mask.png", out / f"{stem}_overlay.png"
        save_mask(pred, mask_path, colors)
        Image.fromarray(overlay(image, pred, colors)).save(overlay_path)
        log.info("%s (%dx%d) -> %s, %s", path, image.shape[2], image.shape[1], mask_path, overlay_path)
        written.append((mask_path, overlay_path))
    if not written:
        raise ValueError(f"none of the {len(paths)} images could be predicted: " + _reasons(bad))
    return written


def _skip(skipped: list[tuple[Path, str]], path: Path, err: BaseException) -> None:
    reason = str(err).replace(f"{path}: ", "")
    skipped.append((path, reason))
    log.warning("skipped %s: %s", path, reason)


def _reasons(skipped: list[tuple[Path, str]], shown: int = 3) -> str:
    text = "; ".join(f"{p}: {r}" for p, r in skipped[:shown])
    return text + (f"; and {len(skipped) - shown} more" if len(skipped) > shown else "")
