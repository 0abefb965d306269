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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pixcon.data.base import PairTransform, Scan, SegmentationDataset
from pixcon.data.cityscapes import Cityscapes, cityscapes_split_ids, scan_cityscapes
from pixcon.data.folder import SegmentationFolder, read_ids, scan_folder
from pixcon.data.isprs import ISPRSPatches, scan_isprs
from pixcon.data.nifti import NiftiOptions, NiftiSlices, nifti_split_ids, scan_nifti
from pixcon.data.voc import VOCSegmentation, scan_voc, voc_split_ids

if TYPE_CHECKING:
    from pixcon.config import DataConfig

logger = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 20


class DatasetError(ValueError):
    """A dataset failed :func:`check_dataset`; the message lists the problems."""


def _open_folder(d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None) -> Any:
    return SegmentationFolder(
        d.root, ids=ids, split=split, transform=t, classes_file=d.classes_file, mask_type=d.mask_type
    )


def _open_voc(d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None) -> Any:
    return VOCSegmentation(d.root, split=split, ids=ids, sbd=d.sbd, transform=t)


def _open_cityscapes(
    d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None
) -> Any:
    return Cityscapes(d.root, split=split, ids=ids, transform=t)


def _open_isprs(d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None) -> Any:
    return ISPRSPatches(
        d.root,
        site=d.format,  # type: ignore[arg-type]
        split=split,
        ids=ids,
        bands=d.bands,
        patch_size=d.patch_size,
        patch_stride=d.patch_stride,
        eroded=d.eroded_labels,
        transform=t,
    )


def _folder_split_ids(d: DataConfig, split: str) -> list[str]:
    return read_ids(Path(d.root) / "splits" / f"{split}.txt")


def _isprs_split_ids(d: DataConfig, split: str) -> list[str]:
    return _open_isprs(d, split, None, None).ids


def _scan_isprs(d: DataConfig, splits: Sequence[str] | None, ids: Sequence[str] | None) -> Scan:
    return scan_isprs(
        d.root,
        site=d.format,  # type: ignore[arg-type]
        splits=splits,
        ids=ids,
        bands=d.bands,
        patch_size=d.patch_size,
        eroded=d.eroded_labels,
    )


def _open_nifti(d: DataConfig, split: str | None, ids: Sequence[str] | None, t: PairTransform | None) -> Any:
    return NiftiSlices(d.root, split=split, ids=ids, options=NiftiOptions.from_config(d), transform=t)


@dataclass(frozen=True)
class _Format:
    open: Callable[[DataConfig, str | None, Sequence[str] | None, PairTransform | None], Any]
    split_ids: Callable[[DataConfig, str], list[str]]
    scan: Callable[[DataConfig, Sequence[str] | None, Sequence[str] | None], Scan]


FORMATS: dict[str, _Format] = {
    "folder": _Format(
        open=_open_folder,
        split_ids=_folder_split_ids,
        scan=lambda d, s, i: scan_folder(d.root, s, i, classes_file=d.classes_file, mask_type=d.mask_type),
    ),
    "voc": _Format(
        open=_open_voc,
        split_ids=lambda d, s: voc_split_ids(d.root, s, sbd=d.sbd),
        scan=lambda d, s, i: scan_voc(d.root, s, i, sbd=d.sbd),
    ),
    "cityscapes": _Format(
        open=_open_cityscapes,
        split_ids=lambda d, s: cityscapes_split_ids(d.root, s),
        scan=lambda d, s, i: scan_cityscapes(d.root, s, i),
    ),
    "potsdam": _Format(open=_open_isprs, split_ids=_isprs_split_ids, scan=_scan_isprs),
    "vaihingen": _Format(open=_open_isprs, split_ids=_isprs_split_ids, scan=_scan_isprs),
    "nifti": _Format(
        open=_open_nifti,
        split_ids=lambda d, s: nifti_split_ids(d.root, s, NiftiOptions.from_config(d)),
        scan=lambda d, s, i: scan_nifti(d.root, s, i, options=NiftiOptions.from_config(d)),
    ),
}


def _format(data: DataConfig) -> _Format:
    if data.format not in FORMATS:
        raise KeyError(f"unknown data.format {data.format!r}; available: {sorted(FORMATS)}")
    return FORMATS[data.format]


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
        from pixcon.data.pseudo import PseudoMasks

        base = _format(data).open(data, split, ids, None)
        return PseudoMasks(base, data.pseudo_masks, transform)  # type: ignore[return-value]
    return _format(data).open(data, split, ids, transform)  # type: ignore[no-any-return]


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

    def format(self) -> str:
        """A readable multi-line summary: counts, sizes, class histogram, then every problem."""
        lines = [f"{self.dataset_format} dataset at {self.root}: {self.num_images} {self.unit}s checked"]
        if self.height_range is not None and self.width_range is not None:
            (h0, h1), (w0, w1) = self.height_range, self.width_range
            lines.append(f"size: H {h0}-{h1}, W {w0}-{w1}")
        labelled = sum(self.class_pixels.values())
        if self.class_pixels:
            lines.append(f"class pixels ({labelled:,} labelled, {self.ignored_pixels:,} ignored):")
            width = max(len(n) for n in self.class_pixels)
            for name, count in self.class_pixels.items():
                pct = 100.0 * count / labelled if labelled else 0.0
                lines.append(f"  {name:<{width}}  {count:>14,}  {pct:6.2f}%")
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


def check_dataset(
    data: DataConfig, splits: Sequence[str] | None = None, ids: Sequence[str] | None = None
) -> DatasetReport:
    """Decodes every image and mask of the selection and collects every problem, naming its file.

    Found: images without masks and masks without images, split-file ids without files, unreadable
    or truncated files, image/mask size mismatches, unknown mask colours, mask values outside
    ``0 .. num_classes - 1`` that are not the ignore index, and (Potsdam/Vaihingen) tiles smaller than
    a patch or with the wrong number of bands. Reading does not stop at the first problem.

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
    """
    scan = _format(data).scan(data, splits, ids)
    report = DatasetReport(
        dataset_format=data.format,
        root=str(data.root),
        unit=scan.unit,
        errors=list(scan.errors),
        warnings=list(scan.warnings),
    )
    known = scan.class_names is not None
    num_classes = len(scan.class_names) if scan.class_names is not None else 0
    counts = np.zeros(max(num_classes, 1), dtype=np.int64)
    heights: list[int] = []
    widths: list[int] = []
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
            if len(hist) > len(counts):
                counts = np.pad(counts, (0, len(hist) - len(counts)))
            counts[: len(hist)] += hist
    if heights:
        report.height_range, report.width_range = (min(heights), max(heights)), (min(widths), max(widths))
    names = scan.class_names if scan.class_names is not None else [f"class_{c}" for c in range(len(counts))]
    report.class_pixels = {name: int(counts[c]) if c < len(counts) else 0 for c, name in enumerate(names)}
    level = logging.INFO if report.ok else logging.WARNING
    logger.log(
        level, "checked %d %ss of %s: %d errors", report.num_images, scan.unit, data.root, len(report.errors)
    )
    return report
