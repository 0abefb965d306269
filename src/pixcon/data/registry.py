"""One entry point per task for every dataset format: open a split, list its ids, check the files.

``data.format`` picks the reader:

=============  ===============================================  ==========================
format         reader                                           splits
=============  ===============================================  ==========================
folder         :class:`~pixcon.data.folder.SegmentationFolder`  ``splits/<name>.txt``
voc            :class:`~pixcon.data.voc.VOCSegmentation`        ImageSets files, trainaug
cityscapes     :class:`~pixcon.data.cityscapes.Cityscapes`      folders of leftImg8bit
potsdam        :class:`~pixcon.data.isprs.ISPRSPatches`         benchmark tiles, splits/
vaihingen      :class:`~pixcon.data.isprs.ISPRSPatches`         benchmark tiles, splits/
nifti          :class:`~pixcon.data.nifti.NiftiSlices`          volumes or slice ranges
=============  ===============================================  ==========================

Images deeper than 8 bits are scaled by ``data.value_range`` (see :mod:`pixcon.data.images`); when it
is unset, :func:`resolve_value_range` measures it over the training images at training start.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pixcon.data.base import PairTransform, Scan, SegmentationDataset
from pixcon.data.cityscapes import CITYSCAPES_PALETTE, Cityscapes, cityscapes_split_ids, scan_cityscapes
from pixcon.data.folder import SegmentationFolder, load_class_info, read_ids, scan_folder
from pixcon.data.images import (
    VALUE_RANGE_KEY,
    ValueRange,
    check_value_range,
    depth_name,
    image_dtype,
    value_extent,
)
from pixcon.data.inventory import (
    CROPS_PER_MASK,
    IGNORED_CROP_WARN,
    STRAY_MAX_SHARE,
    count_ignored_only_crops,
    find_stray_classes,
)
from pixcon.data.isprs import ISPRS_PALETTE, ISPRSPatches, Site, scan_isprs, split_tile_names
from pixcon.data.nifti import NiftiOptions, NiftiSlices, nifti_split_ids, scan_nifti
from pixcon.data.pseudo import PseudoMasks
from pixcon.data.voc import VOC_PALETTE, VOCSegmentation, scan_voc, voc_split_ids

if TYPE_CHECKING:
    from pixcon.config import DataConfig

logger = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 20


class DatasetError(ValueError):
    """A dataset failed :func:`check_dataset`; the message lists the problems."""


def _open_folder(d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None) -> Any:
    return SegmentationFolder(
        d.root,
        ids=ids,
        split=split,
        transform=t,
        classes_file=d.classes_file,
        mask_type=d.mask_type,
        value_range=d.value_range,
    )


def _open_voc(d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None) -> Any:
    return VOCSegmentation(d.root, split=split, ids=ids, sbd=d.sbd, transform=t, value_range=d.value_range)


def _open_cityscapes(
    d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None
) -> Any:
    return Cityscapes(d.root, split=split, ids=ids, transform=t, value_range=d.value_range)


def _open_isprs(d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None) -> Any:
    return ISPRSPatches(
        d.root,
        site=cast(Site, d.format),  # only the "potsdam" and "vaihingen" formats open here
        split=split,
        ids=ids,
        bands=d.bands,
        patch_size=d.patch_size,
        patch_stride=d.patch_stride,
        eroded=d.eroded_labels,
        transform=t,
        value_range=d.value_range,
    )


def _folder_split_ids(d: DataConfig, split: str) -> list[str]:
    path = Path(d.root) / "splits" / f"{split}.txt"
    if Path(d.root).is_dir() and not path.parent.exists():
        raise FileNotFoundError(
            f"split file {path} not found: {d.root} has no splits/ folder (one <split>.txt of ids per split)"
        )
    return read_ids(path)


def _isprs_split_ids(d: DataConfig, split: str) -> list[str]:
    return _open_isprs(d, split, None, None).ids


def _scan_isprs(d: DataConfig, splits: Sequence[str] | None, ids: Sequence[str] | None) -> Scan:
    return scan_isprs(
        d.root,
        site=cast(Site, d.format),  # only the "potsdam" and "vaihingen" formats scan here
        splits=splits,
        ids=ids,
        bands=d.bands,
        patch_size=d.patch_size,
        eroded=d.eroded_labels,
    )


def _classes_file_palette(d: DataConfig) -> list[tuple[int, ...]] | None:
    """The ``palette`` of a dataset's classes file, if it still can be read."""
    try:
        info = load_class_info(Path(d.root), d.classes_file)
    except (OSError, ValueError):
        return None
    return list(info.palette) if info.palette else None


def _open_nifti(d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None) -> Any:
    return NiftiSlices(d.root, split=split, ids=ids, options=NiftiOptions.from_config(d), transform=t)


@dataclass(frozen=True)
class _Format:
    open: Callable[[DataConfig, str | None, Sequence[str] | None, PairTransform | None], Any]
    split_ids: Callable[[DataConfig, str], list[str]]
    scan: Callable[[DataConfig, Sequence[str] | None, Sequence[str] | None], Scan]
    # The members of a split as the scan names its samples, from the split's definition alone (no
    # file is decoded): sample ids, or tile names for Potsdam/Vaihingen.
    members: Callable[[DataConfig, str], list[str]]
    # the class colours, read without opening the dataset (for predictions of a checkpoint)
    palette: Callable[[DataConfig], list[tuple[int, ...]] | None] = _classes_file_palette
    # the reader maps intensities to [0, 1] itself (NIfTI's per-volume windows): data.value_range,
    # bit depths and value ranges do not apply
    scales_intensities: bool = False


FORMATS: dict[str, _Format] = {
    "folder": _Format(
        open=_open_folder,
        split_ids=_folder_split_ids,
        scan=lambda d, s, i: scan_folder(d.root, s, i, classes_file=d.classes_file, mask_type=d.mask_type),
        members=_folder_split_ids,
    ),
    "voc": _Format(
        open=_open_voc,
        split_ids=lambda d, s: voc_split_ids(d.root, s, sbd=d.sbd),
        scan=lambda d, s, i: scan_voc(d.root, s, i, sbd=d.sbd),
        members=lambda d, s: voc_split_ids(d.root, s, sbd=d.sbd),
        palette=lambda d: list(VOC_PALETTE),
    ),
    "cityscapes": _Format(
        open=_open_cityscapes,
        split_ids=lambda d, s: cityscapes_split_ids(d.root, s),
        scan=lambda d, s, i: scan_cityscapes(d.root, s, i),
        members=lambda d, s: cityscapes_split_ids(d.root, s),
        palette=lambda d: list(CITYSCAPES_PALETTE),
    ),
    "potsdam": _Format(
        open=_open_isprs,
        split_ids=_isprs_split_ids,
        scan=_scan_isprs,
        members=lambda d, s: split_tile_names(d.root, d.format, s),
        palette=lambda d: list(ISPRS_PALETTE),
    ),
    "vaihingen": _Format(
        open=_open_isprs,
        split_ids=_isprs_split_ids,
        scan=_scan_isprs,
        members=lambda d, s: split_tile_names(d.root, d.format, s),
        palette=lambda d: list(ISPRS_PALETTE),
    ),
    "nifti": _Format(
        open=_open_nifti,
        split_ids=lambda d, s: nifti_split_ids(d.root, s, NiftiOptions.from_config(d)),
        scan=lambda d, s, i: scan_nifti(d.root, s, i, options=NiftiOptions.from_config(d)),
        members=lambda d, s: nifti_split_ids(d.root, s, NiftiOptions.from_config(d)),
        scales_intensities=True,
    ),
}


def _format(data: DataConfig) -> _Format:
    if data.format not in FORMATS:
        raise KeyError(f"unknown data.format {data.format!r}; available: {sorted(FORMATS)}")
    return FORMATS[data.format]


def format_palette(data: DataConfig) -> list[tuple[int, ...]] | None:
    """The class colours of ``data.format`` (a folder dataset's from its classes file), or None."""
    return _format(data).palette(data)


def open_dataset(
    data: DataConfig,
    split: str | None = None,
    ids: Sequence[str] | None = None,
    transform: PairTransform | None = None,
) -> SegmentationDataset:
    """Opens the reader of ``data.format`` on a split or an explicit id list.

    Args:
        data: Dataset settings (format, root and the format's options).
        split: Split name (see each reader). Exclusive with `ids`; neither: every sample.
        ids: Explicit sample ids (e.g. a label split written by ``pixcon split``).
        transform: Joint transform ``(image (C, H, W) float, mask (H, W) int64) -> same``.

    Returns:
        A dataset following :class:`~pixcon.data.base.SegmentationDataset`.

    Raises:
        KeyError: Unknown format (the message lists the valid ones).
        FileNotFoundError, ValueError: From the reader; the message names the file or id.
    """
    if data.pseudo_masks:
        base = _format(data).open(data, split, ids, None)
        return PseudoMasks(base, data.pseudo_masks, transform)
    return _format(data).open(data, split, ids, transform)


def split_ids(data: DataConfig, split: str) -> list[str]:
    """The sample ids of `split` in ``data.format`` (patch ids for Potsdam and Vaihingen).

    Raises:
        KeyError: Unknown format.
        FileNotFoundError, ValueError: Missing or unknown split (the message names it).
    """
    return _format(data).split_ids(data, split)


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found.

    Attributes:
        dataset_format: ``data.format``.
        root: ``data.root``.
        num_images: Samples checked (tiles for Potsdam and Vaihingen).
        unit: "image" or "tile".
        height_range: (min, max) image height over the decoded images, or None.
        width_range: (min, max) image width, or None.
        class_pixels: Labelled pixels per class name, over the decoded masks.
        ignored_pixels: Pixels equal to the ignore index.
        image_depths: Decoded images per bit depth (e.g. ``{"8-bit (uint8)": 40}``).
        value_extents: (min, max) of the finite values per non-8-bit depth.
        value_range: ``data.value_range`` as declared, or None (measured at training start).
        ignored_crops: (crops holding only ignored pixels, crops drawn) over the training masks
            checked, or None when no training mask was checked.
        errors: Every problem found, one line each, naming its file.
        warnings: Findings that do not stop training.
    """

    dataset_format: str
    root: str
    num_images: int = 0
    unit: str = "image"
    height_range: tuple[int, int] | None = None
    width_range: tuple[int, int] | None = None
    class_pixels: dict[str, int] = field(default_factory=dict)
    ignored_pixels: int = 0
    image_depths: dict[str, int] = field(default_factory=dict)
    value_extents: dict[str, tuple[float, float]] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None
    ignored_crops: tuple[int, int] | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def same_size(self) -> bool:
        """Whether every sample has one size (so samples can be batched at native size)."""
        if self.unit == "tile":
            return True  # Potsdam/Vaihingen samples are patches of data.patch_size
        return (
            self.height_range is not None
            and self.width_range is not None
            and self.height_range[0] == self.height_range[1]
            and self.width_range[0] == self.width_range[1]
        )

    @property
    def ok(self) -> bool:
        """True when no error was found (warnings allowed)."""
        return not self.errors

    @property
    def ignored_crop_fraction(self) -> float | None:
        """The estimated fraction of training crops that hold only ignored pixels, or None."""
        if self.ignored_crops is None or self.ignored_crops[1] == 0:
            return None
        return self.ignored_crops[0] / self.ignored_crops[1]

    def _depth_lines(self) -> list[str]:
        lines = []
        for depth, count in self.image_depths.items():
            line = f"bit depth: {depth}: {count} {self.unit}s"
            if depth in self.value_extents:
                lo, hi = self.value_extents[depth]
                line += f", values {lo:g} to {hi:g}; scaled by "
                if self.value_range is not None:
                    line += f"{VALUE_RANGE_KEY} [{self.value_range[0]:g}, {self.value_range[1]:g}]"
                else:
                    line += f"the range measured over the training images at training start ({VALUE_RANGE_KEY} unset)"
            else:
                line += ", scaled by 1/255"
            lines.append(line)
        return lines

    def format(self) -> str:
        """A readable multi-line summary: counts, sizes, depths, class histogram, then every problem."""
        lines = [f"{self.dataset_format} dataset at {self.root}: {self.num_images} {self.unit}s checked"]
        if self.height_range is not None and self.width_range is not None:
            (h0, h1), (w0, w1) = self.height_range, self.width_range
            lines.append(f"size: H {h0}-{h1}, W {w0}-{w1}")
        lines += self._depth_lines()
        labelled = sum(self.class_pixels.values())
        if self.class_pixels:
            lines.append(f"class pixels ({labelled:,} labelled, {self.ignored_pixels:,} ignored):")
            width = max(len(n) for n in self.class_pixels)
            for name, count in self.class_pixels.items():
                pct = 100.0 * count / labelled if labelled else 0.0
                lines.append(f"  {name:<{width}}  {count:>14,}  {pct:6.2f}%")
        fraction = self.ignored_crop_fraction
        if fraction is not None and self.ignored_crops is not None:
            lines.append(
                f"training crops with only ignored pixels: {100 * fraction:.1f}% "
                f"(estimated from {self.ignored_crops[1]:,} random crops)"
            )
        lines.append(f"errors: {len(self.errors)}")
        lines += [f"  {e}" for e in self.errors]
        lines.append(f"warnings: {len(self.warnings)}")
        lines += [f"  {w}" for w in self.warnings]
        lines.append("OK" if self.ok else f"FAILED: {len(self.errors)} errors")
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        """Raises :class:`DatasetError` listing the errors (at most 20, then "... and N more")."""
        if self.ok:
            return
        shown = self.errors[:MAX_LISTED_PROBLEMS]
        rest = len(self.errors) - len(shown)
        listing = "\n".join(f"  {e}" for e in shown) + (f"\n  ... and {rest} more" if rest else "")
        raise DatasetError(
            f"{len(self.errors)} problems in the {self.dataset_format} dataset at {self.root}:\n{listing}"
        )


def _problem(path: Path, err: BaseException) -> str:
    message = str(err)
    return message if str(path) in message else f"{path}: {message}"


_CONSEQUENCE = {
    "train_split": "training needs it (write it, one id per line, or set data.train_split)",
    "val_split": "training will run without validation",
    "test_split": "`pixcon evaluate` on the test split will fail",
}


def _check_splits(data: DataConfig, report: DatasetReport) -> list[str] | None:
    """Validates the splits training and evaluation read; returns the train split's members.

    Checked: ``data.train_split`` (missing or empty: error), ``data.val_split`` and
    ``data.test_split`` (missing: warning; empty: error), train identical to val or test (error) or
    sharing ids with them (warning), val identical to or sharing ids with test (warning), and
    ``data.labeled_split`` (unreadable, repeated or empty: error; ids outside the train split: error).
    """
    fmt = _format(data)
    members: dict[str, list[str]] = {}
    for key in ("train_split", "val_split", "test_split"):
        name = getattr(data, key)
        try:
            ids = fmt.members(data, name)
        except FileNotFoundError as err:
            line = f"data.{key} {name!r}: {err}; {_CONSEQUENCE[key]}"
            (report.errors if key == "train_split" else report.warnings).append(line)
            continue
        except (OSError, ValueError) as err:
            report.errors.append(str(err))  # repeated ids, a folder as split file, ...: names the file
            continue
        if not ids:
            report.errors.append(f"data.{key} {name!r} is empty: it lists no {report.unit}")
            continue
        members[key] = ids
    sets = {k: set(v) for k, v in members.items()}
    for a, b in (("train_split", "val_split"), ("train_split", "test_split"), ("val_split", "test_split")):
        if a not in sets or b not in sets:
            continue
        shared = sets[a] & sets[b]
        names = f"data.{a} {getattr(data, a)!r} and data.{b} {getattr(data, b)!r}"
        if sets[a] == sets[b]:
            line = f"{names} list the same {len(shared)} ids"
            if a == "train_split":
                report.errors.append(
                    f"{line}: scores on {getattr(data, b)!r} would be measured on training images"
                )
            else:
                report.warnings.append(
                    f"{line}: choosing anything on {getattr(data, a)!r} is choosing on the test set"
                )
        elif shared:
            example = sorted(shared)[:3]
            report.warnings.append(f"{names} share {len(shared)} ids, e.g. {example}")
    if data.labeled_split:
        try:
            labeled = read_ids(data.labeled_split)
        except FileNotFoundError as err:
            report.errors.append(f"data.labeled_split: {err}")
            labeled = None
        except (OSError, ValueError) as err:
            report.errors.append(str(err))
            labeled = None
        if labeled is not None and not labeled:
            report.errors.append(f"data.labeled_split {data.labeled_split} is empty")
        elif labeled and "train_split" in members:
            try:  # patch ids for Potsdam/Vaihingen; a broken tile is reported by the scan
                pool = set(fmt.split_ids(data, data.train_split))
            except (OSError, ValueError):
                pool = None
            outside = [i for i in labeled if pool is not None and i not in pool]
            if outside:
                report.errors.append(
                    f"data.labeled_split {data.labeled_split}: {len(outside)} ids are not in the "
                    f"{data.train_split!r} split (data.train_split), e.g. {outside[:3]}"
                )
    return members.get("train_split")


def _stray_errors(
    counts: np.ndarray, strays: list[int], first_seen: dict[int, Path | None], ignore_index: int
) -> list[str]:
    """One error per stray class id of an inferred inventory (see :mod:`pixcon.data.inventory`)."""
    total = int(counts.sum())
    return [
        f"mask value {v} ({int(counts[v])} pixels, {100 * counts[v] / total:.3f}% of the labelled pixels; "
        f"first in {first_seen.get(v)}) lies far beyond the other class ids and would make a {v + 1}-class "
        f"head (stray: under {STRAY_MAX_SHARE:.0%} of the pixels, more unused ids below it than used): fix "
        f"the mask (or set those pixels to {ignore_index}), or declare the classes in a classes file "
        "(classes.yaml or data.classes_file); training refuses this inventory"
        for v in sorted(strays)
    ]


def check_dataset(
    data: DataConfig, splits: Sequence[str] | None = None, ids: Sequence[str] | None = None
) -> DatasetReport:
    """Decodes every image and mask of the selection and collects every problem, naming its file.

    Found: images without masks and masks without images, split-file ids without files, ids with
    several image files, repeated ids, unreadable or truncated files, image/mask size mismatches,
    unknown mask colours, mask values outside ``0 .. num_classes - 1`` that are not the ignore index,
    non-finite values in float images, and (Potsdam/Vaihingen) tiles smaller than a patch or with the
    wrong number of bands. Reading does not stop at the first problem.

    Also reported: the bit depth of the images and the value range of non-8-bit ones (mixed depths, a
    declared ``data.value_range`` that 8-bit data ignores or that values fall outside: warnings); for
    masks without a classes file, stray class ids (errors; see :mod:`pixcon.data.inventory`); and the
    estimated fraction of training crops (``data.image_size``, ``data.scale_min``) holding only ignored
    pixels (a warning above 5 %).

    The whole-dataset check (neither `splits` nor `ids`) also validates the splits training and
    evaluation read (see :func:`_check_splits`): missing or empty ``data.train_split``, identical or
    overlapping train/val/test, and a ``data.labeled_split`` with ids outside the train split.

    Args:
        data: Dataset settings.
        splits: Check these splits. Exclusive with `ids`. Neither: the whole dataset, including
            orphan files and every split file.
        ids: Check these ids (tile names or patch ids for Potsdam/Vaihingen).

    Returns:
        The report; call ``report.raise_if_errors()`` to stop on problems.

    Raises:
        KeyError: Unknown format.
        FileNotFoundError: The dataset root (or its main image folder) does not exist.
        NotADirectoryError: The dataset root (or its main image folder) is a file.
    """
    scan = _format(data).scan(data, splits, ids)
    report = DatasetReport(
        dataset_format=data.format,
        root=str(data.root),
        unit=scan.unit,
        value_range=check_value_range(data.value_range) if data.value_range is not None else None,
        errors=list(scan.errors),
        warnings=list(scan.warnings),
    )
    crop_ids: set[str] | None = None  # samples whose crops are estimated; None = every sample
    if ids is None:
        train = _check_splits(data, report) if splits is None else None
        if splits is None:
            crop_ids = set(train) if train is not None else None
        elif data.train_split in splits:
            try:
                crop_ids = set(_format(data).members(data, data.train_split))
            except (OSError, ValueError):
                crop_ids = set()  # the scan reports the split file
        else:
            crop_ids = set()  # no training split checked: no crop estimate
    known = scan.class_names is not None
    num_classes = len(scan.class_names) if scan.class_names is not None else 0
    counts = np.zeros(max(num_classes, 1), dtype=np.int64)
    first_seen: dict[int, Path | None] = {}
    heights: list[int] = []
    widths: list[int] = []
    outside_range: list[str] = []
    rng = np.random.default_rng(0)
    crops = [0, 0]  # ignored-only, drawn
    window = data.patch_size if scan.unit == "tile" else None
    for k, sample in enumerate(scan.samples):
        if k and k % 500 == 0:
            logger.info("checked %d of %d %ss", k, len(scan.samples), scan.unit)
        report.num_images += 1
        image = mask = None
        # Any decoder failure is a problem of that one file: record it and go on with the rest.
        if sample.image is not None:
            try:
                image = scan.read_image(sample.image)  # (H, W, C)
            except Exception as err:
                report.errors.append(_problem(sample.image, err))
        if sample.mask is not None:
            try:
                mask = scan.read_mask(sample.mask)  # (H, W)
            except Exception as err:
                report.errors.append(_problem(sample.mask, err))
        if image is not None:
            heights.append(image.shape[0])
            widths.append(image.shape[1])
            if not _format(data).scales_intensities:
                _record_depth(report, sample.image, image, outside_range)
            if scan.in_channels is not None and image.shape[2] != scan.in_channels:
                report.errors.append(
                    f"image {sample.image} has {image.shape[2]} channels, expected {scan.in_channels}"
                )
            if scan.min_size is not None and (
                image.shape[0] < scan.min_size[0] or image.shape[1] < scan.min_size[1]
            ):
                report.errors.append(
                    f"{scan.unit} {sample.id} ({sample.image}) is {image.shape[1]}x{image.shape[0]} (WxH), "
                    f"smaller than the patch size {scan.min_size[1]}x{scan.min_size[0]}"
                )
        if image is not None and mask is not None and image.shape[:2] != mask.shape:
            report.errors.append(
                f"size mismatch: image {sample.image} is {image.shape[1]}x{image.shape[0]} (WxH) "
                f"but mask {sample.mask} is {mask.shape[1]}x{mask.shape[0]}"
            )
        if mask is not None:
            if mask.size and mask.min() < 0:
                report.errors.append(f"mask {sample.mask} has negative values")
                continue
            if crop_ids is None or sample.id in crop_ids:
                crops[0] += count_ignored_only_crops(
                    mask, scan.ignore_index, data.image_size, data.scale_min, rng, window=window
                )
                crops[1] += CROPS_PER_MASK
            hist = np.bincount(mask.ravel(), minlength=num_classes)  # (V,) pixels per value
            if scan.ignore_index < len(hist):
                report.ignored_pixels += int(hist[scan.ignore_index])
                hist[scan.ignore_index] = 0
            if known and hist[num_classes:].any():
                wrong = np.nonzero(hist[num_classes:])[0] + num_classes
                report.errors.append(
                    f"mask {sample.mask} has class ids {wrong[:8].tolist()}{' ...' if len(wrong) > 8 else ''} "
                    f"outside 0..{num_classes - 1} and not the ignore index {scan.ignore_index} "
                    f"({int(hist[num_classes:].sum())} pixels)"
                )
                hist = hist[:num_classes]
            if not known:
                hist = np.trim_zeros(hist, "b")  # classes are named up to the largest value seen
                for v in np.nonzero(hist)[0]:
                    first_seen.setdefault(int(v), sample.mask)
            if len(hist) > len(counts):
                counts = np.pad(counts, (0, len(hist) - len(counts)))
            counts[: len(hist)] += hist
    if heights:
        report.height_range, report.width_range = (min(heights), max(heights)), (min(widths), max(widths))
    names = scan.class_names if scan.class_names is not None else [f"class_{c}" for c in range(len(counts))]
    report.class_pixels = {name: int(counts[c]) if c < len(counts) else 0 for c, name in enumerate(names)}
    if not known:
        strays = find_stray_classes(counts)
        report.errors += _stray_errors(counts, strays, first_seen, scan.ignore_index)
        if strays:  # list the classes up to the plausible ones, then the strays, not hundreds of empty ids
            plausible = int(np.nonzero(counts[: min(strays)])[0].max())  # the largest id that is no stray
            report.class_pixels = {names[c]: int(counts[c]) for c in [*range(plausible + 1), *sorted(strays)]}
    _depth_findings(report, data, outside_range)
    if crops[1]:
        report.ignored_crops = (crops[0], crops[1])
        fraction = crops[0] / crops[1]
        if fraction > IGNORED_CROP_WARN:
            report.warnings.append(
                f"{100 * fraction:.1f}% of training crops would hold only ignored pixels (estimated from "
                f"{crops[1]:,} random crops of the training masks at data.image_size {data.image_size}, "
                f"data.scale_min {data.scale_min:g}): they add no supervised signal. Raise data.scale_min "
                f"(larger crops), leave mostly-ignored masks out of data.labeled_split, or check the "
                f"ignore index ({scan.ignore_index})"
            )
    report.errors = list(dict.fromkeys(report.errors))  # one line per problem, however often it is met
    report.warnings = list(dict.fromkeys(report.warnings))
    level = logging.INFO if report.ok else logging.WARNING
    logger.log(
        level, "checked %d %ss of %s: %d errors", report.num_images, scan.unit, data.root, len(report.errors)
    )
    return report


def _depth_findings(report: DatasetReport, data: DataConfig, outside_range: list[str]) -> None:
    """Warnings about bit depths and value ranges (see :func:`check_dataset`)."""
    if len(report.image_depths) > 1:
        listing = ", ".join(f"{n} {d}" for d, n in report.image_depths.items())
        report.warnings.append(
            f"mixed bit depths: {listing} {report.unit}s; 8-bit images are scaled by 1/255 and the others "
            f"by the value range, so the same scene would look different: store every image at one depth"
        )
    if report.value_range is not None and report.image_depths and not report.value_extents:
        report.warnings.append(
            f"{VALUE_RANGE_KEY} {list(data.value_range or [])} is not used: every image is 8-bit (scaled by 1/255)"
        )
    if outside_range:
        report.warnings.append(
            f"{len(outside_range)} {report.unit}s have values outside {VALUE_RANGE_KEY} "
            f"{list(data.value_range or [])}; they map outside [0, 1] (not clipped): {outside_range[:3]}"
        )


def _record_depth(
    report: DatasetReport, sample_image: Any, image: np.ndarray, outside_range: list[str]
) -> None:
    """Adds ``image``'s (H, W, C) bit depth and value extent to ``report`` (non-finite values are
    errors; values outside a declared range are collected in ``outside_range``)."""
    depth = depth_name(image.dtype)
    report.image_depths[depth] = report.image_depths.get(depth, 0) + 1
    if image.dtype != np.uint8:
        bad = int((~np.isfinite(image)).any(axis=-1).sum()) if image.dtype.kind == "f" else 0
        if bad:
            report.errors.append(f"image {sample_image} has {bad} pixels with non-finite values (NaN or inf)")
        extent = value_extent(image)
        if extent is not None:
            old = report.value_extents.get(depth, extent)
            report.value_extents[depth] = (min(old[0], extent[0]), max(old[1], extent[1]))
            lo_hi = report.value_range
            if lo_hi is not None and (extent[0] < lo_hi[0] or extent[1] > lo_hi[1]):
                outside_range.append(f"{sample_image} ({extent[0]:g} to {extent[1]:g})")


def measure_value_range(data: DataConfig, ids: Sequence[str] | None = None) -> ValueRange | None:
    """The (min, max) of the finite values over the non-8-bit training images, or None for 8-bit data.

    Headers are read first (nothing is decoded when every image is 8-bit); only non-8-bit images are
    decoded. 8-bit images in a mixed dataset are left out: they are always scaled by 1/255. Images that
    cannot be read are skipped here (``check_dataset`` reports them).

    Args:
        data: Dataset settings.
        ids: The training images (sample ids; patch or tile ids for Potsdam/Vaihingen, whose whole tiles
            are measured). None: the ``data.train_split`` split.

    Returns:
        ``(lo, hi)`` with ``lo <= hi``, or None when every image is 8-bit.
    """
    if _format(data).scales_intensities:
        return None
    scan = (
        _format(data).scan(data, None, ids)
        if ids is not None
        else _format(data).scan(data, [data.train_split], None)
    )
    lo, hi = np.inf, -np.inf
    wide = 0
    for sample in scan.samples:
        if sample.image is None:
            continue
        try:
            if image_dtype(sample.image) == np.uint8:
                continue
            extent = value_extent(scan.read_image(sample.image))  # (H, W, C) -> (min, max)
        except (OSError, ValueError):
            continue
        wide += 1
        if extent is not None:
            lo, hi = min(lo, extent[0]), max(hi, extent[1])
    if not wide:
        return None
    if not np.isfinite(lo):
        raise ValueError(
            f"the {wide} non-8-bit training images of {data.root} hold no finite value; "
            f"set {VALUE_RANGE_KEY}: [lo, hi]"
        )
    return float(lo), float(hi)


def resolve_value_range(data: DataConfig, ids: Sequence[str] | None = None) -> DataConfig:
    """`data` with ``value_range`` filled in from the training images when they are not 8-bit.

    Call it once when training starts, before the datasets are opened, and keep the returned config:
    saved with the run, its range makes evaluation, prediction and pseudo-labelling scale images as
    training did. A declared ``data.value_range`` is kept as it is; 8-bit data is returned unchanged
    (the same object).

    Args:
        data: Dataset settings.
        ids: The training images (see :func:`measure_value_range`). None: ``data.train_split``.

    Returns:
        `data`, or a copy with ``value_range=[lo, hi]``.

    Raises:
        ValueError: Every non-8-bit training image holds one and the same value (no range to scale
            by), or none is finite; the message asks for ``data.value_range``.
    """
    if data.value_range is not None:
        return data
    measured = measure_value_range(data, ids)
    if measured is None:
        return data
    lo, hi = measured
    if not lo < hi:
        raise ValueError(
            f"every non-8-bit training image of {data.root} holds the single value {lo:g}, so no value "
            f"range can be measured; set {VALUE_RANGE_KEY}: [lo, hi]"
        )
    logger.info("%s: images are not 8-bit; measured %s = [%g, %g]", data.root, VALUE_RANGE_KEY, lo, hi)
    return dataclasses.replace(data, value_range=[lo, hi])
