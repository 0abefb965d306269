"""Runs loss jobs through the Triton kernels under Triton's CPU interpreter, in a fresh process.

``TRITON_INTERPRET=1`` is read when a function is decorated with ``triton.jit``, Triton's own
library functions included, so it must be set before ``triton`` is first imported. In the test
process torch, timm or lightning have imported Triton long before, hence this worker:
``python fused_interpreter.py JOBS.pt RESULTS.pt`` with ``TRITON_INTERPRET=1`` in its environment.

A job is a dict: ``z`` (N, D), ``labels`` (N,), ``image_ids`` (N,) or None, ``temperature``,
``form``, ``variant``, ``anchors`` ((start, stop) or None), ``blocks`` ((BLOCK_M, BLOCK_N), or
None for the dispatcher's ``backend="triton"``) and ``reduce`` (``"mean"``: the loss,
``"sum"``: the anchors' sum). The result holds ``value``, ``count``, ``grad`` (d value / d z) and
``host_syncs``: the operators of forward and backward that would make a CUDA run wait for the host
(``host_sync.py``).

A job with ``kind="step"`` is a pretraining step instead (:func:`run_step`).
"""

from __future__ import annotations

import os
import sys
from typing import Any
from unittest import mock

import torch
from host_sync import HostSyncRecorder


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    if job.get("kind") == "step":
        return run_step(job)
    with HostSyncRecorder() as recorder:
        result = _loss_job(job)
    return {**result, "count": int(result["count"]), "host_syncs": recorder.found}


def _loss_job(job: dict[str, Any]) -> dict[str, Any]:
    from pixcon.losses import fused
    from pixcon.losses.contrastive import pair_scopes, pixel_contrastive_sum

    z = job["z"].clone().requires_grad_(True)
    n = z.shape[0]
    kwargs = dict(image_ids=job["image_ids"], variant=job["variant"])
    anchors = job["anchors"]
    if job["blocks"] is None:
        total, count = pixel_contrastive_sum(
            z,
            job["labels"],
            job["temperature"],
            job["form"],
            255,
            anchors=anchors,
            backend="triton",
            **kwargs,
        )
    else:
        pos_groups, neg_groups = pair_scopes(job["image_ids"], job["variant"])
        total, count = fused.fused_pixel_contrastive_sum(
            z,
            job["labels"],
            job["temperature"],
            job["form"],
            255,
            pos_groups=pos_groups,
            neg_groups=neg_groups,
            anchors=(0, n) if anchors is None else anchors,
            blocks=job["blocks"],
        )
    value = total / count.clamp(min=1) if job["reduce"] == "mean" else total
    value.backward()
    return {
        "value": value.detach(),
        "count": count,
        "grad": z.grad,
        "requires_grad": value.requires_grad,
        "interpreted": type(fused._forward_kernel).__name__ == "InterpretedFunction",
    }


def run_step(job: dict[str, Any]) -> dict[str, Any]:
    """The pretraining step's loss path as a CUDA run takes it, here on CPU tensors.

    Job: ``project_sampled``, ``max_pixels``, ``variant``, ``fixed_shapes`` (the CUDA sampler;
    False: the CPU sampler, to show that the recorder sees the step). The model is the recipes'
    (DeepLabV3+/ResNet-18, a one-layer projection head) on 2 random 64-px images of 4 classes in
    16-px blocks. The loss takes the Triton kernels (run by the interpreter) as it would on CUDA.
    Forward (model, sampler, projection, loss) and backward run under the recorder; the
    optimizer step does not (on the CPU, AdamW reads its step counters with ``.item()``, which on
    CUDA stay on the host).
    """
    from pixcon.losses import contrastive, fused
    from pixcon.losses.dense import PixelContrastiveLoss
    from pixcon.models import create_segmenter
    from pixcon.objectives.supervised import PixelContrast

    torch.manual_seed(0)
    model = create_segmenter(arch="deeplabv3plus", encoder="resnet18", num_classes=4, proj_layers=1)
    loss = PixelContrastiveLoss(
        0.1, variant=job["variant"], max_pixels=job["max_pixels"], fixed_shapes=job["fixed_shapes"]
    )
    objective = PixelContrast(loss, project_sampled=job["project_sampled"])
    images = torch.rand(2, 3, 64, 64)
    masks = torch.randint(0, 4, (2, 4, 4)).repeat_interleave(16, 1).repeat_interleave(16, 2)  # (2, 64, 64)
    masks[:, :8] = 255
    launches = []  # the kernels' autograd function, not the early return of an empty batch
    apply = fused._FusedPixelContrast.apply

    def counted(*args: Any) -> Any:
        launches.append(args[0].shape[0])
        return apply(*args)

    with (
        mock.patch.object(contrastive, "_fused_supported", lambda z: True),  # what a CUDA tensor gets
        mock.patch.object(fused._FusedPixelContrast, "apply", counted),
        HostSyncRecorder() as recorder,
    ):
        value = objective(model, (images, masks))["contrast"]
        value.backward()
    grads = [p.grad for p in model.projection.parameters()]
    return {
        "value": value.detach(),
        "host_syncs": recorder.found,
        "head_has_grad": all(g is not None and bool(g.abs().sum() > 0) for g in grads),
        "kernel_rows": launches,
    }


def main(argv: list[str]) -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    import triton.runtime.interpreter  # noqa: F401  (fails early if the interpreter is missing)

    jobs = torch.load(argv[0], weights_only=False)
    torch.save({name: run_job(job) for name, job in jobs.items()}, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
