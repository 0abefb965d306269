"""Tests for pixcon.metrics: scikit-learn equivalence when accumulated, hand-computed values, errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    jaccard_score,
    recall_score,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from torch import Tensor

from pixcon.metrics import (
    ConfusionMeter,
    class_accuracy,
    cohen_kappa,
    confusion_matrix,
    f1_per_class,
    iou_per_class,
    macro_f1,
    mean_class_accuracy,
    mean_iou,
    pixel_accuracy,
    scores_from_confusion,
)

IGNORE = 255


def _random_batches(
    num_batches: int, num_classes: int, seed: int, classes: list[int] | None = None
) -> tuple[Tensor, Tensor]:
    """Correlated (pred, target) stacks of shape (num_batches, 2, 8, 8) with ~10% ignored pixels."""
    g = torch.Generator().manual_seed(seed)
    pool = torch.tensor(classes if classes is not None else list(range(num_classes)))
    shape = (num_batches, 2, 8, 8)
    target = pool[torch.randint(len(pool), shape, generator=g)]
    noise = pool[torch.randint(len(pool), shape, generator=g)]
    pred = torch.where(torch.rand(shape, generator=g) < 0.6, target, noise)  # 60% + chance correct
    target[torch.rand(shape, generator=g) < 0.1] = IGNORE
    return pred, target


def _flat_kept(pred: Tensor, target: Tensor) -> tuple[np.ndarray, np.ndarray]:
    keep = target != IGNORE
    return target[keep].numpy(), pred[keep].numpy()


def _accumulate(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for p, t in zip(pred, target, strict=True):
        cm += confusion_matrix(p, t, num_classes=num_classes, ignore_index=IGNORE)
    return cm


@pytest.mark.parametrize("num_classes", [2, 3, 6])
@pytest.mark.parametrize("seed", [0, 1])
def test_accumulated_metrics_match_sklearn(num_classes: int, seed: int) -> None:
    pred, target = _random_batches(num_batches=4, num_classes=num_classes, seed=seed)
    cm = _accumulate(pred, target, num_classes)
    y, y_hat = _flat_kept(pred, target)
    labels = list(range(num_classes))
    present = sorted(set(y) | set(y_hat))

    assert cm.dtype == torch.long
    np.testing.assert_array_equal(cm.numpy(), sk_confusion_matrix(y, y_hat, labels=labels))
    np.testing.assert_allclose(
        iou_per_class(cm)[present].numpy(), jaccard_score(y, y_hat, average=None, labels=present)
    )
    assert mean_iou(cm).item() == pytest.approx(jaccard_score(y, y_hat, average="macro", labels=present))
    assert pixel_accuracy(cm).item() == pytest.approx(accuracy_score(y, y_hat))
    np.testing.assert_allclose(
        class_accuracy(cm).numpy(), recall_score(y, y_hat, average=None, labels=labels, zero_division=0)
    )
    assert mean_class_accuracy(cm).item() == pytest.approx(balanced_accuracy_score(y, y_hat))
    assert cohen_kappa(cm).item() == pytest.approx(cohen_kappa_score(y, y_hat))
    np.testing.assert_allclose(
        f1_per_class(cm)[present].numpy(), f1_score(y, y_hat, average=None, labels=present)
    )
    assert macro_f1(cm).item() == pytest.approx(f1_score(y, y_hat, average="macro", labels=present))
    assert all(v.dtype == torch.float64 for v in (iou_per_class(cm), mean_iou(cm), cohen_kappa(cm)))


def test_confusion_matrix_matches_pixel_loop() -> None:
    # Reference straight from the definition. (torchmetrics' multiclass_confusion_matrix gives the
    # same counts too, but importing it pulls in torchvision and costs ~4 s.)
    pred, target = _random_batches(num_batches=1, num_classes=5, seed=3)
    expected = torch.zeros(5, 5, dtype=torch.long)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist(), strict=True):
        if t != IGNORE:
            expected[t, p] += 1
    torch.testing.assert_close(confusion_matrix(pred[0], target[0], num_classes=5), expected)
    torch.testing.assert_close(confusion_matrix(pred, target, num_classes=5), expected)  # any shape


def test_absent_class_is_nan_and_excluded_from_means() -> None:
    # Class 3 never occurs; class 5 is only ever predicted (false positives only).
    num_classes = 6
    pred, target = _random_batches(num_batches=3, num_classes=num_classes, seed=7, classes=[0, 1, 2, 4])
    pred[0, 0, 0, :4] = 5
    cm = _accumulate(pred, target, num_classes)
    y, y_hat = _flat_kept(pred, target)
    present = [0, 1, 2, 4, 5]
    in_target = [0, 1, 2, 4]

    iou, f1, acc = iou_per_class(cm), f1_per_class(cm), class_accuracy(cm)
    assert math.isnan(iou[3]) and math.isnan(f1[3]) and math.isnan(acc[3])
    assert iou[5].item() == 0.0 and f1[5].item() == 0.0 and math.isnan(acc[5])
    assert mean_iou(cm).item() == pytest.approx(jaccard_score(y, y_hat, average="macro", labels=present))
    assert macro_f1(cm).item() == pytest.approx(f1_score(y, y_hat, average="macro", labels=present))
    # sklearn's default label set is also "present in y or y_hat".
    assert macro_f1(cm).item() == pytest.approx(f1_score(y, y_hat, average="macro"))
    assert mean_class_accuracy(cm).item() == pytest.approx(
        recall_score(y, y_hat, average="macro", labels=in_target)
    )
    assert cohen_kappa(cm).item() == pytest.approx(cohen_kappa_score(y, y_hat))

    scores = scores_from_confusion(cm)
    assert scores["iou_per_class"]["3"] is None and scores["f1_per_class"]["3"] is None
    assert scores["iou_per_class"]["5"] == 0.0
    assert scores["miou"] == pytest.approx(mean_iou(cm).item())


def test_hand_computed_two_class_example() -> None:
    # rows = target, cols = prediction; n = 10.
    cm = torch.tensor([[3, 1], [2, 4]])
    # IoU_0 = 3 / (3 + 1 + 2) = 1/2, IoU_1 = 4 / (4 + 1 + 2) = 4/7, mIoU = (1/2 + 4/7) / 2 = 15/28.
    torch.testing.assert_close(iou_per_class(cm), torch.tensor([0.5, 4 / 7], dtype=torch.float64))
    assert mean_iou(cm).item() == pytest.approx(15 / 28)
    # p_o = 7/10; p_e = (4 * 5 + 6 * 5) / 100 = 1/2; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    assert cohen_kappa(cm).item() == pytest.approx(0.4)
    assert pixel_accuracy(cm).item() == pytest.approx(0.7)
    # recall: 3/4, 4/6; F1: 2*3/(4+5) = 2/3, 2*4/(6+5) = 8/11.
    assert mean_class_accuracy(cm).item() == pytest.approx(17 / 24)
    assert macro_f1(cm).item() == pytest.approx((2 / 3 + 8 / 11) / 2)

    pred = torch.tensor([0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1])
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, IGNORE])
    torch.testing.assert_close(confusion_matrix(pred, target, num_classes=2), cm)


def test_degenerate_matrices() -> None:
    empty = torch.zeros(3, 3, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (mean_iou, pixel_accuracy, mean_class_accuracy, cohen_kappa, macro_f1):
            assert math.isnan(fn(empty).item()), fn.__name__
        assert torch.isnan(iou_per_class(empty)).all()
        scores = scores_from_confusion(empty)
    assert scores["num_pixels"] == 0
    assert all(scores[k] is None for k in ("miou", "pixel_acc", "mean_class_acc", "kappa", "macro_f1"))
    json.dumps(scores, allow_nan=False)

    # Chance agreement 1 (every pixel is class 1 in target and prediction): kappa defined as 1.
    single = torch.tensor([[0, 0], [0, 5]])
    assert cohen_kappa(single).item() == 1.0
    assert mean_iou(single).item() == 1.0  # class 0 absent from both: excluded, not 0

    with pytest.raises(ValueError, match=r"square"):
        mean_iou(torch.zeros(2, 3, dtype=torch.long))


def test_dataset_level_miou_differs_from_per_image_average() -> None:
    # Image A: 100 pixels of class 0, all right. Image B: 50 of class 0, 50 of class 1, all
    # predicted 0. Per image: mIoU_A = 1 (class 1 absent), mIoU_B = (50/100 + 0) / 2 = 0.25, mean
    # 0.625. Dataset-level: cm = [[150, 0], [50, 0]], IoU_0 = 150/200, IoU_1 = 0, mIoU = 0.375.
    # The per-image mean lets the easy image outvote the class that is always missed; the
    # benchmark mIoU (and ours) counts every pixel of the dataset once.
    target_a, pred_a = torch.zeros(1, 10, 10, dtype=torch.long), torch.zeros(1, 10, 10, dtype=torch.long)
    target_b, pred_b = torch.zeros(1, 10, 10, dtype=torch.long), torch.zeros(1, 10, 10, dtype=torch.long)
    target_b[:, 5:] = 1
    meter = ConfusionMeter(num_classes=2)
    per_image = []
    for pred, target in ((pred_a, target_a), (pred_b, target_b)):
        meter.update(pred, target)
        per_image.append(mean_iou(confusion_matrix(pred, target, num_classes=2)).item())
    assert per_image == pytest.approx([1.0, 0.25])
    assert float(np.mean(per_image)) == pytest.approx(0.625)
    assert meter.compute()["miou"] == pytest.approx(0.375)


def test_meter_equals_functional_and_accepts_logits() -> None:
    num_classes = 4
    pred, target = _random_batches(num_batches=3, num_classes=num_classes, seed=11)
    from_ids, from_logits = ConfusionMeter(num_classes), ConfusionMeter(num_classes)
    g = torch.Generator().manual_seed(0)
    for p, t in zip(pred, target, strict=True):
        from_ids.update(p, t)
        # Logits whose argmax is p: one-hot scaled plus noise smaller than the margin.
        logits = 5.0 * F.one_hot(p, num_classes).permute(0, 3, 1, 2).float()  # (B, C, H, W)
        logits = logits + torch.rand(logits.shape, generator=g)
        from_logits.update(logits.requires_grad_(), t)
    cm = _accumulate(pred, target, num_classes)
    torch.testing.assert_close(from_ids.cm, cm)
    torch.testing.assert_close(from_logits.cm, cm)
    assert not from_logits.cm.requires_grad

    names = ["road", "car", "sky", "tree"]
    expected = scores_from_confusion(cm, class_names=names)
    assert from_ids.compute(class_names=names) == expected
    assert from_logits.compute(class_names=names) == expected
    assert list(expected["iou_per_class"]) == names
    assert expected["num_pixels"] == int((target != IGNORE).sum())
    assert json.loads(json.dumps(expected, allow_nan=False)) == expected
    assert list(from_ids.compute()["f1_per_class"]) == ["0", "1", "2", "3"]


def test_meter_merge_and_reset() -> None:
    num_classes = 3
    pred, target = _random_batches(num_batches=2, num_classes=num_classes, seed=5)
    rank0, rank1 = ConfusionMeter(num_classes), ConfusionMeter(num_classes)
    rank0.update(pred[0], target[0])
    rank1.update(pred[1], target[1].int())  # any integer dtype works for targets
    rank0.merge(rank1.cm)
    torch.testing.assert_close(rank0.cm, _accumulate(pred, target, num_classes))
    with pytest.raises(ValueError, match=r"cannot merge"):
        rank0.merge(torch.zeros(2, 2, dtype=torch.long))
    rank0.reset()
    assert rank0.cm.sum().item() == 0 and rank0.cm.shape == (3, 3)
    assert rank0.cm.device == torch.device("cpu")


def test_errors() -> None:
    target = torch.tensor([[0, 1, 7, IGNORE]])
    with pytest.raises(ValueError, match=r"target contains label\(s\) \[7\] outside \[0, 4\).*num_classes=4"):
        confusion_matrix(torch.zeros_like(target), target, num_classes=4)
    with pytest.raises(ValueError, match=r"target contains label\(s\) \[-1\]"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.tensor([0, -1, 1]), num_classes=4)
    with pytest.raises(ValueError, match=r"pred contains class id\(s\) \[4\] outside \[0, 4\)"):
        confusion_matrix(torch.tensor([0, 4, 1]), torch.tensor([0, 1, 1]), num_classes=4)
    # A bad prediction on an ignored pixel is not counted, so it is not an error.
    confusion_matrix(torch.tensor([0, 9]), torch.tensor([0, IGNORE]), num_classes=4)
    with pytest.raises(ValueError, match=r"same shape.*\(2, 4, 4\).*\(2, 4, 5\)"):
        confusion_matrix(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"integer class ids"):
        confusion_matrix(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), num_classes=4)

    meter = ConfusionMeter(num_classes=4)
    with pytest.raises(ValueError, match=r"expected num_classes=4"):
        meter.update(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits of shape"):
        meter.update(torch.randn(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"same shape"):
        meter.update(torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target contains label\(s\) \[7\]"):
        meter.update(torch.zeros_like(target), target)
    assert meter.cm.sum().item() == 0  # a failed update leaves the meter untouched
    with pytest.raises(ValueError, match=r"3 class_names for a 4-class"):
        meter.compute(class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"num_classes must be >= 1"):
        ConfusionMeter(num_classes=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_meter_on_cuda() -> None:
    pred, target = _random_batches(num_batches=2, num_classes=3, seed=2)
    meter = ConfusionMeter(num_classes=3, device="cuda")
    for p, t in zip(pred, target, strict=True):
        meter.update(p.cuda(), t.cuda())
    assert meter.cm.is_cuda
    torch.testing.assert_close(meter.cm.cpu(), _accumulate(pred, target, 3))
    assert meter.compute() == scores_from_confusion(_accumulate(pred, target, 3))
