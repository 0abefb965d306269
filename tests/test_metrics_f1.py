"""SuperCon (imbalanced classes): per-class/macro F1 vs scikit-learn, effective-number weights, focal loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import f1_score

from pixcon.metrics import ConfusionMeter, f1_per_class, iou_per_class, macro_f1


def test_meter_f1_matches_sklearn_on_imbalanced_accumulated_batches() -> None:
    # A rare class (3), a class never predicted (2), ignored pixels, four batches of logits.
    g = torch.Generator().manual_seed(0)
    target = torch.multinomial(torch.tensor([0.6, 0.3, 0.08, 0.02]), 4 * 2 * 16 * 16, True, generator=g)
    target = target.view(4, 2, 16, 16)
    pred = torch.where(
        torch.rand(target.shape, generator=g) < 0.7, target, torch.randint(4, target.shape, generator=g)
    )
    pred[pred == 2] = 0
    target[:, 0, :3] = 255
    meter = ConfusionMeter(num_classes=4)
    for p, t in zip(pred, target, strict=True):
        meter.update(F.one_hot(p, 4).permute(0, 3, 1, 2).float(), t)
    scores = meter.compute(class_names=["a", "b", "c", "d"])
    keep = target != 255
    y, y_hat = target[keep].numpy(), pred[keep].numpy()
    expected = f1_score(y, y_hat, average=None, labels=[0, 1, 2, 3], zero_division=0)
    assert list(scores["f1_per_class"]) == ["a", "b", "c", "d"]
    np.testing.assert_allclose(list(scores["f1_per_class"].values()), expected, rtol=1e-12)
    assert scores["f1_per_class"]["c"] == 0.0  # in the target, never predicted
    assert scores["macro_f1"] == pytest.approx(f1_score(y, y_hat, average="macro"), rel=1e-12)


def test_f1_is_the_harmonic_mean_of_precision_and_recall() -> None:
    cm = torch.tensor([[50, 3, 2], [4, 10, 1], [0, 5, 0]])  # class 2: no true positive
    f1 = f1_per_class(cm)
    for c in range(3):
        tp, predicted, actual = cm[c, c].item(), cm[:, c].sum().item(), cm[c].sum().item()
        precision, recall = tp / predicted, tp / actual
        expected = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
        assert f1[c].item() == pytest.approx(expected, rel=1e-12)
    assert macro_f1(cm).item() == pytest.approx(f1.mean().item(), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 50), min_size=9, max_size=9),
)
def test_f1_and_iou_satisfy_the_dice_jaccard_identity(counts: list[int]) -> None:
    cm = torch.tensor(counts).view(3, 3)
    f1, iou = f1_per_class(cm), iou_per_class(cm)
    for c in range(3):
        if math.isnan(iou[c].item()):
            assert math.isnan(f1[c].item())  # absent from target and prediction
        else:
            assert f1[c].item() == pytest.approx(
                2 * iou[c].item() / (1 + iou[c].item()), rel=1e-12, abs=1e-15
            )
            assert 0.0 <= f1[c].item() <= 1.0
    value = macro_f1(cm).item()
    assert math.isnan(value) if cm.sum() == 0 else 0.0 <= value <= 1.0
