"""Dataset-level semantic segmentation metrics from one accumulated confusion matrix.

Every score here is derived from a single (C, C) confusion matrix summed over the *whole*
evaluation set (rows = target class, columns = predicted class). Nothing is averaged per image or
per batch. This is the mIoU of the PASCAL VOC / Cityscapes benchmarks and of Zhao et al.
(ICCV 2021), and what torchmetrics' ``MulticlassJaccardIndex`` computes; torchmetrics'
``segmentation.MeanIoU`` instead averages per-image IoUs, which is a different number: an image
with a few pixels of a class weighs as much as an image full of it, and a class missing from an
image either drops out or scores 0 depending on the convention (see
``test_dataset_level_miou_differs_from_per_image_average``).

Conventions, all in float64:

* A class *absent from both target and prediction* has undefined IoU and F1 (NaN) and is left out
  of ``mean_iou`` and ``macro_f1``. A class that is predicted but never in the target has IoU 0
  and F1 0 and counts in the means: it is a false-positive-only class. This matches scikit-learn's
  ``jaccard_score``/``f1_score`` with ``average="macro"`` over ``labels`` = the classes present in
  target or prediction (also sklearn's default label set).
* ``class_accuracy`` is recall per class; NaN where the class has no target pixel, and left out of
  ``mean_class_accuracy`` (= sklearn's ``balanced_accuracy_score``).
* An empty matrix (no counted pixel) gives NaN for every score, silently.
* Cohen's kappa is undefined when chance agreement is 1 (every pixel of target and prediction
  is one and the same class); we define it as 1.0 if observed agreement is 1, else 0.0. With a
  valid confusion matrix chance agreement 1 implies observed agreement 1, so in practice this is
  "perfect agreement on a single class scores 1". scikit-learn returns NaN there.

The functional core (:func:`confusion_matrix` and the ``cm -> score`` functions) holds all the
math; :class:`ConfusionMeter` only accumulates the matrix and calls the same functions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ConfusionMeter",
    "class_accuracy",
    "cohen_kappa",
    "confusion_matrix",
    "f1_per_class",
    "iou_per_class",
    "macro_f1",
    "mean_class_accuracy",
    "mean_iou",
    "pixel_accuracy",
    "scores_from_confusion",
]

logger = logging.getLogger(__name__)


def _out_of_range(values: Tensor, num_classes: int) -> list[int]:
    """Sorted distinct entries of ``values`` outside [0, num_classes), at most 5 of them."""
    bad = values[(values < 0) | (values >= num_classes)]
    return bad.unique()[:5].tolist() if bad.numel() else []


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255
) -> Tensor:
    """Confusion matrix of integer predictions against targets.

    Implemented as one ``torch.bincount`` over ``target * C + pred``. This gives the same counts as
    torchmetrics' ``multiclass_confusion_matrix(..., ignore_index=..., validate_args=False)``
    (verified with torchmetrics 1.9), but torchmetrics falls back to an (N, C^2) comparison
    whenever ``torch.use_deterministic_algorithms(True)`` is on (about 7 GB for 8 x 512 x 512
    pixels and 21 classes), while ``torch.bincount`` without weights is deterministic on CPU and CUDA alike.

    Args:
        pred: Predicted class ids, integer dtype, any shape, e.g. (B, H, W).
        target: Target class ids, integer dtype, same shape as ``pred``. Pixels equal to
            ``ignore_index`` are skipped.
        num_classes: Number of classes C, >= 1.
        ignore_index: Target value to skip, or None to count every pixel.

    Returns:
        (C, C) int64 counts on ``pred``'s device; ``cm[t, p]`` = pixels of target class t
        predicted as p.

    Raises:
        ValueError: If the shapes differ, ``pred`` is not integer, ``num_classes`` < 1, or a
            counted (non-ignored) pixel has a target or prediction outside [0, num_classes).
            Predictions at ignored pixels are not checked.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got pred {tuple(pred.shape)} "
            f"and target {tuple(target.shape)}"
        )
    if pred.is_floating_point() or pred.is_complex():
        raise ValueError(
            f"pred must hold integer class ids, got dtype {pred.dtype}; "
            "take logits.argmax(dim=1) first or use ConfusionMeter.update, which accepts logits"
        )
    if target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must hold integer class ids, got dtype {target.dtype}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).to(pred.device).long()  # (N,), (N,)
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]  # (N_kept,), (N_kept,)
    if bad := _out_of_range(target, num_classes):
        raise ValueError(
            f"target contains label(s) {bad} outside [0, {num_classes}) "
            f"(num_classes={num_classes}, ignore_index={ignore_index})"
        )
    if bad := _out_of_range(pred, num_classes):
        raise ValueError(
            f"pred contains class id(s) {bad} outside [0, {num_classes}) (num_classes={num_classes})"
        )
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)  # (C*C,)
    return counts.view(num_classes, num_classes)  # (C, C)


def _as_cm(cm: Tensor) -> Tensor:
    """Validate a (C, C) confusion matrix and return it as float64."""
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {tuple(cm.shape)}")
    return cm.double()


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with NaN where ``den == 0``; never emits a warning."""
    return torch.where(den > 0, num / torch.where(den > 0, den, 1.0), math.nan)


def iou_per_class(cm: Tensor) -> Tensor:
    """Intersection over union per class, TP / (TP + FP + FN).

    Args:
        cm: Confusion matrix, shape (C, C), rows = target, cols = prediction.

    Returns:
        float64, shape (C,); NaN for classes absent from both target and prediction.
    """
    cm = _as_cm(cm)
    tp = cm.diag()  # (C,)
    union = cm.sum(dim=0) + cm.sum(dim=1) - tp  # (C,)
    return _safe_div(tp, union)


def mean_iou(cm: Tensor) -> Tensor:
    """Dataset-level mIoU: mean of :func:`iou_per_class` over classes present in target or prediction.

    Args:
        cm: Confusion matrix, shape (C, C).

    Returns:
        float64 scalar; NaN for an empty matrix.
    """
    return iou_per_class(cm).nanmean()


def pixel_accuracy(cm: Tensor) -> Tensor:
    """Fraction of counted pixels predicted correctly.

    Args:
        cm: Confusion matrix, shape (C, C).

    Returns:
        float64 scalar; NaN for an empty matrix.
    """
    cm = _as_cm(cm)
    return _safe_div(cm.diag().sum(), cm.sum())


def class_accuracy(cm: Tensor) -> Tensor:
    """Per-class accuracy, i.e. recall TP / (TP + FN).

    Args:
        cm: Confusion matrix, shape (C, C).

    Returns:
        float64, shape (C,); NaN where the class has no target pixel.
    """
    cm = _as_cm(cm)
    return _safe_div(cm.diag(), cm.sum(dim=1))


def mean_class_accuracy(cm: Tensor) -> Tensor:
    """Mean of :func:`class_accuracy` over classes with target pixels (sklearn's balanced accuracy).

    Args:
        cm: Confusion matrix, shape (C, C).

    Returns:
        float64 scalar; NaN for an empty matrix.
    """
    return class_accuracy(cm).nanmean()


def cohen_kappa(cm: Tensor) -> Tensor:
    """Cohen's kappa, (p_o - p_e) / (1 - p_e) (Cohen, 1960).

    p_o is the observed agreement (pixel accuracy) and p_e the chance agreement
    sum_k (row_k / n) * (col_k / n). Computed on probabilities, not on raw counts, so that n^2
    never has to be formed (it exceeds float64's exact integer range for ~1e8 pixels).

    Args:
        cm: Confusion matrix, shape (C, C).

    Returns:
        float64 scalar. NaN for an empty matrix. When p_e == 1 (target and prediction are the
        same single class everywhere) kappa is undefined; we return 1.0 if p_o == 1, else 0.0.
    """
    cm = _as_cm(cm)
    n = cm.sum()
    if n == 0:
        return torch.tensor(math.nan, dtype=torch.float64, device=cm.device)
    p_observed = cm.diag().sum() / n
    p_chance = ((cm.sum(dim=1) / n) * (cm.sum(dim=0) / n)).sum()
    if p_chance == 1:
        return (p_observed == 1).double()
    return (p_observed - p_chance) / (1 - p_chance)


def f1_per_class(cm: Tensor) -> Tensor:
    """F1 (Dice) per class, 2 TP / (2 TP + FP + FN).

    Args:
        cm: Confusion matrix, shape (C, C).

    Returns:
        float64, shape (C,); NaN for classes absent from both target and prediction, 0 for a class
        only predicted or only in the target (sklearn's ``zero_division=0`` gives the same).
    """
    cm = _as_cm(cm)
    return _safe_div(2 * cm.diag(), cm.sum(dim=0) + cm.sum(dim=1))


def macro_f1(cm: Tensor) -> Tensor:
    """Mean of :func:`f1_per_class` over classes present in target or prediction.

    Equals ``sklearn.metrics.f1_score(y, y_hat, average="macro", labels=present)`` with
    ``present`` the classes occurring in ``y`` or ``y_hat`` (sklearn's default ``labels``).
    Classes that never occur are left out rather than scored 0, as for :func:`mean_iou`.

    Args:
        cm: Confusion matrix, shape (C, C).

    Returns:
        float64 scalar; NaN for an empty matrix.
    """
    return f1_per_class(cm).nanmean()


def _to_float(x: Tensor) -> float | None:
    value = float(x.item())
    return None if math.isnan(value) else value


def scores_from_confusion(cm: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Every score of this module from one confusion matrix, as a JSON-safe dict.

    NaN becomes ``None`` everywhere, so ``json.dumps(scores, allow_nan=False)`` always works.
    Scalar scores are NaN (hence ``None``) only for an empty matrix.

    Args:
        cm: Confusion matrix, shape (C, C), rows = target, cols = prediction.
        class_names: C distinct names for the per-class entries; defaults to "0", "1", ...

    Returns:
        ``{"miou", "pixel_acc", "mean_class_acc", "kappa", "macro_f1"}`` -> float (or None),
        ``{"iou_per_class", "f1_per_class"}`` -> {name: float or None} and
        ``"num_pixels"`` -> int.

    Raises:
        ValueError: If ``cm`` is not square or ``class_names`` has the wrong length or duplicates.
    """
    cm = cm.detach()
    num_classes = _as_cm(cm).shape[0]
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class_names for a {num_classes}-class confusion matrix")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names must be distinct, got {names}")
    num_pixels = int(cm.sum().item())
    if num_pixels == 0:
        logger.debug("scores_from_confusion: empty confusion matrix, every score is None")
    iou, f1 = iou_per_class(cm).cpu(), f1_per_class(cm).cpu()
    return {
        "miou": _to_float(iou.nanmean()),
        "pixel_acc": _to_float(pixel_accuracy(cm)),
        "mean_class_acc": _to_float(mean_class_accuracy(cm)),
        "kappa": _to_float(cohen_kappa(cm)),
        "macro_f1": _to_float(f1.nanmean()),
        "iou_per_class": {name: _to_float(v) for name, v in zip(names, iou, strict=True)},
        "f1_per_class": {name: _to_float(v) for name, v in zip(names, f1, strict=True)},
        "num_pixels": num_pixels,
    }


class ConfusionMeter:
    """Accumulates one dataset-level confusion matrix; every score derives from it.

    Example:
        >>> meter = ConfusionMeter(num_classes=21)
        >>> for images, masks in loader:  # doctest: +SKIP
        ...     meter.update(model(images), masks)
        >>> scores = meter.compute(class_names=VOC_CLASSES)  # doctest: +SKIP

    Under DDP, sum the matrices across ranks before ``compute``, e.g.
    ``torch.distributed.all_reduce(meter.cm)`` or ``meter.merge(other_rank_cm)``.

    Attributes:
        cm: int64 (C, C) counts on ``device``, rows = target, cols = prediction.
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, device: torch.device | str | None = None
    ) -> None:
        """Create an empty meter.

        Args:
            num_classes: Number of classes C, >= 1.
            ignore_index: Target value to skip, or None to count every pixel.
            device: Where ``cm`` lives; None means CPU. Updates computed elsewhere are moved here.
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.cm = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)  # (C, C)

    @torch.no_grad()
    def update(self, pred_or_logits: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            pred_or_logits: Either logits or scores, floating, shape (B, C, H, W) (argmax over
                dim 1), or integer class ids of the same shape as ``target``.
            target: Integer class ids, shape (B, H, W); ``ignore_index`` pixels are skipped.

        Raises:
            ValueError: On shape mismatch, floating predictions without a class dimension, a
                class dimension other than C, or out-of-range labels (see :func:`confusion_matrix`).
        """
        if pred_or_logits.is_floating_point():
            if pred_or_logits.ndim != target.ndim + 1:
                raise ValueError(
                    "floating predictions must be logits of shape (B, C, H, W) for a (B, H, W) target, "
                    f"got {tuple(pred_or_logits.shape)} and {tuple(target.shape)}; "
                    "integer class ids must have the target's shape"
                )
            if pred_or_logits.shape[1] != self.num_classes:
                raise ValueError(
                    f"logits have {pred_or_logits.shape[1]} channels on dim 1, "
                    f"expected num_classes={self.num_classes}"
                )
            pred = pred_or_logits.argmax(dim=1)  # (B, C, H, W) -> (B, H, W)
        else:
            pred = pred_or_logits
        batch_cm = confusion_matrix(
            pred, target, num_classes=self.num_classes, ignore_index=self.ignore_index
        )
        self.cm += batch_cm.to(self.cm.device)

    def merge(self, other_cm: Tensor) -> None:
        """Add another (C, C) confusion matrix, e.g. one gathered from another DDP rank.

        Args:
            other_cm: Integer counts, shape (C, C).
        """
        if other_cm.shape != self.cm.shape:
            raise ValueError(
                f"cannot merge a {tuple(other_cm.shape)} matrix into a {tuple(self.cm.shape)} meter"
            )
        if other_cm.is_floating_point() or other_cm.is_complex():
            raise ValueError(f"confusion matrix counts must be integer, got dtype {other_cm.dtype}")
        self.cm += other_cm.detach().to(device=self.cm.device, dtype=torch.long)

    def reset(self) -> None:
        """Zero the accumulated matrix, keeping its device."""
        self.cm.zero_()

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Scores of the accumulated matrix; see :func:`scores_from_confusion`."""
        return scores_from_confusion(self.cm, class_names=class_names)
