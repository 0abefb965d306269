"""The Triton kernels compile for NVIDIA GPUs without one: Triton's compiler and its bundled ptxas
build sm_80 and sm_90 code on the CPU. Catches type and lowering errors, and shared memory beyond
the device's limit, for the default launch configurations, before a GPU is lent (slow: seconds
per kernel)."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="Triton's interpreter is on"),
]

POINTERS_I32 = [
    "SEG",
    "NG",
    "ORIG",
    "R_SEG",
    "R_NG",
    "R_ORIG",
    "R_POS",
    "R_OUT_LO",
    "R_OUT_HI",
    "R_POS_LO",
    "R_POS_HI",
    "C_ROW_LO",
    "C_ROW_HI",
]
POINTERS_F32 = [
    "OUT_LSE",
    "OUT_W",
    "OUT_LOSS",
    "OUT_NPOS",
    "LSE",
    "COEF_NEG",
    "COEF_POS",
    "GRAD_OUT",
    "DZR",
    "DZC",
]
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize(
    "dtype, d, zhao, neg_groups, precision",
    [
        (torch.float32, 256, True, True, "ieee"),
        (torch.float32, 256, False, False, "tf32"),
        (torch.bfloat16, 256, True, False, "ieee"),
        (torch.bfloat16, 256, False, True, "ieee"),
        (torch.float32, 64, True, False, "ieee"),
        (torch.float32, 100, False, True, "ieee"),
    ],
)
def test_kernels_compile_within_shared_memory(arch, dtype, d, zhao, neg_groups, precision) -> None:
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from pixcon.losses import fused

    block_m, block_n, block_d, warps = fused._blocks(d, dtype)
    z_ptr = "*fp32" if dtype == torch.float32 else "*bf16"
    constants = dict(
        ZHAO=zhao,
        HAS_NEG_GROUPS=neg_groups,
        ACC=tl.float32,
        PRECISION=precision,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=block_d,
    )
    for kernel in (fused._forward_kernel, fused._backward_rows_kernel, fused._backward_cols_kernel):
        signature = {}
        for name in kernel.arg_names:
            if name in constants:
                signature[name] = "constexpr"
            elif name in ("Z", "ZR"):
                signature[name] = z_ptr
            elif name == "NVALID":
                signature[name] = "*i64"
            elif name in POINTERS_I32:
                signature[name] = "*i32"
            elif name in POINTERS_F32:
                signature[name] = "*fp32"
            else:
                signature[name] = "fp32" if name == "scale" else "i32"
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constants),
            target=GPUTarget("cuda", arch, 32),
            options=dict(num_warps=warps, num_stages=2),
        )
        assert compiled.metadata.shared <= SHARED_LIMIT[arch], (kernel.fn.__name__, compiled.metadata.shared)
