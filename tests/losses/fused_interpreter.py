"""Runs loss jobs through the Triton kernels under Triton's CPU interpreter, in a fresh process.

``TRITON_INTERPRET=1`` is read when a function is decorated with ``triton.jit``, Triton's own
library functions included, so it must be set before ``triton`` is first imported. In the test
process torch, timm or lightning have imported Triton long before, hence this worker:
``python fused_interpreter.py JOBS.pt RESULTS.pt`` with ``TRITON_INTERPRET=1`` in its environment.

A job is a dict: ``z`` (N, D), ``labels`` (N,), ``image_ids`` (N,) or None, ``temperature``,
``form``, ``variant``, ``anchors`` ((start, stop) or None), ``blocks`` ((BLOCK_M, BLOCK_N), or
None for the dispatcher's ``backend="triton"``) and ``reduce`` (``"mean"``: the loss,
``"sum"``: the anchors' sum). The result holds ``value``, ``count`` and ``grad`` (d value / d z).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch


def run_job(job: dict[str, Any]) -> dict[str, Any]:
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
        "count": int(count),
        "grad": z.grad,
        "requires_grad": value.requires_grad,
        "interpreted": type(fused._forward_kernel).__name__ == "InterpretedFunction",
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
