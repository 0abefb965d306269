"""The host-sync recorder (host_sync.py) and the CUDA sampler's path, in this process.

The fused kernel's path and whole pretraining steps are checked under Triton's interpreter in
``test_fused.py``; here the recorder itself, and the pieces that need no kernel.
"""

from __future__ import annotations

import pytest
import torch
from host_sync import HostSyncRecorder

from pixcon.losses.contrastive import pair_scopes
from pixcon.losses.dense import PixelContrastiveLoss, balanced_sample, balanced_sample_fixed


def _masks(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, 5, (4, 6, 6), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    masks[:, :3] = 255
    return masks  # (4, 24, 24)


def _found(fn) -> list[str]:  # type: ignore[no-untyped-def]
    with HostSyncRecorder() as recorder:
        fn()
    return recorder.found


@pytest.mark.parametrize(
    ("name", "fn"),
    [
        ("item", lambda x: x[0].item()),
        ("bool", lambda x: bool(x.sum() > 0)),
        ("int", lambda x: int(x.argmax())),
        ("mask index", lambda x: x[x > 0]),
        ("mask assign values", lambda x: x.clone().__setitem__(x > 0, torch.arange(3.0))),
        ("mask accumulate", lambda x: x.clone().index_put_((x > 0,), torch.tensor(1.0), accumulate=True)),
        ("allclose", lambda x: torch.allclose(x, x)),
        ("equal", lambda x: torch.equal(x, x)),
        ("one_hot", lambda x: torch.nn.functional.one_hot(x.abs().long())),
        ("nonzero", lambda x: torch.nonzero(x > 0)),
        ("where(cond)", lambda x: torch.where(x > 0)),
        ("unique", lambda x: torch.unique(x.round())),
        ("unique_consecutive", lambda x: torch.unique_consecutive(x.round())),
        ("masked_select", lambda x: x.masked_select(x > 0)),
        ("bincount", lambda x: torch.bincount(x.abs().long())),
        ("repeat_interleave(tensor)", lambda x: x.repeat_interleave(torch.ones(5, dtype=torch.long))),
    ],
)
def test_recorder_flags_operators_that_synchronise(name: str, fn) -> None:  # type: ignore[no-untyped-def]
    x = torch.tensor([0.5, -1.0, 2.0, 3.0, -0.2])
    found = _found(lambda: fn(x))
    assert found, name
    assert "test_host_sync.py" in found[0]  # names the line that ran it


def test_recorder_passes_fixed_shape_operators() -> None:
    x = torch.randn(6, requires_grad=True)
    y = torch.tensor([2, 0, 1, 1, 0, 2])

    def run() -> None:
        order = torch.argsort(y, stable=True)
        start = torch.searchsorted(y[order], y[order])
        picked = torch.where(y > 0, x, 0.0)[order] + start
        ranks = torch.arange(3).repeat_interleave(2) + torch.cumsum(y, 0)
        ranks = ranks + torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]), output_size=6)
        ranks[y > 1] = 0  # a masked_fill on CUDA
        (picked * ranks).sum().backward()  # backward too

    assert _found(run) == []


def test_recorder_sees_backward() -> None:
    class Syncing(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def]
            return x * 2

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def]
            return g * float(g.sum())

    x = torch.randn(3, requires_grad=True)
    found = _found(lambda: Syncing.apply(x).sum().backward())
    assert len(found) == 1 and "_local_scalar_dense" in found[0]


@pytest.mark.parametrize("budget", [16, 200, 10_000])
def test_cuda_sampler_never_waits_for_the_host(budget: int) -> None:
    labels = _masks().flatten()
    assert _found(lambda: balanced_sample_fixed(labels, budget)) == []
    # the CPU sampler does: data-dependent shapes are what it is for
    assert any("aten.nonzero" in f for f in _found(lambda: balanced_sample(labels, budget)))


@pytest.mark.parametrize("variant", ["batch", "within", "cross"])
@pytest.mark.parametrize("max_pixels", [64, "all"])
def test_sampling_and_kernel_layout_never_wait_for_the_host(variant: str, max_pixels: int | str) -> None:
    # PixelContrastiveLoss.sample as on CUDA (fixed shapes), then the index layout the kernels
    # take (sorting, segments, scopes, anchor ranges), forward and backward through the sample.
    pytest.importorskip("triton")
    from pixcon.losses.fused import _layout

    loss = PixelContrastiveLoss(0.1, variant=variant, max_pixels=max_pixels, fixed_shapes=True)
    proj = torch.randn(4, 8, 6, 6, requires_grad=True)

    def run() -> None:
        z, labels, image_ids = loss.sample(proj, _masks())
        pos_groups, neg_groups = pair_scopes(image_ids, variant)
        for anchors in ((0, labels.shape[0]), (3, labels.shape[0] // 2)):
            _layout(labels, 255, pos_groups, neg_groups, anchors)
        z.square().sum().backward()

    assert _found(run) == []
    assert proj.grad is not None and proj.grad.abs().sum() > 0
