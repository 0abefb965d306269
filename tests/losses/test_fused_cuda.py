"""The compiled Triton kernels on a GPU (skipped without CUDA): float32 against the float64 reference."""

from __future__ import annotations

import os

import pytest
import torch
from test_contrastive import _data, reference_loss

from pixcon.losses.contrastive import pixel_contrastive_loss

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="Triton's interpreter is on"),
]


@pytest.mark.parametrize("form", ["zhao", "supcon"])
@pytest.mark.parametrize("variant", ["batch", "within", "cross"])
def test_compiled_kernel_matches_reference(form: str, variant: str) -> None:
    pytest.importorskip("triton")
    z, labels, img = _data(700, 32, 5, 4, 0.1, seed=1)
    expected = reference_loss(z.numpy(), labels.numpy(), 0.1, form, variant, img.numpy())
    x = z.float().cuda().requires_grad_(True)
    loss = pixel_contrastive_loss(x, labels.cuda(), 0.1, form, image_ids=img.cuda(), variant=variant)
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    ref = z.clone().requires_grad_(True)
    pixel_contrastive_loss(ref, labels, 0.1, form, image_ids=img, variant=variant, backend="torch").backward()
    torch.testing.assert_close(x.grad.double().cpu(), ref.grad, rtol=1e-3, atol=1e-6)
