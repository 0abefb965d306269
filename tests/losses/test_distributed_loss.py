"""DDP equivalence on the CPU: two gloo processes give the loss and gradients of one process."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pixcon.losses.contrastive import pixel_contrastive_loss
from pixcon.losses.distributed import distributed_pixel_contrastive_loss

CASES = list(itertools.product(["zhao", "supcon"], ["batch", "within", "cross"]))
SIZES = (23, 17)  # uneven: the pixel budget is per rank and sampling may give fewer pixels


def _tcp_init() -> str:
    """A TCP rendezvous on a free local port (a FileStore's teardown occasionally aborted a rank)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _global_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = sum(SIZES)
    z = torch.randn(n, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.15] = 255
    # Rank 0 holds images 0-3, rank 1 images 0-1 of its own batch (global ids 0-3 and 4-5).
    local = [torch.randint(0, 4, (SIZES[0],), generator=g), torch.randint(0, 2, (SIZES[1],), generator=g)]
    return z, labels, torch.cat([local[0], local[1]])


def _global_image_ids(local_ids: torch.Tensor) -> torch.Tensor:
    # The stride the distributed loss uses: max local id + 1 over ranks, rounded up to even.
    return torch.cat([local_ids[: SIZES[0]], local_ids[SIZES[0] :] + 4])


def _worker(rank: int, init_method: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        results = {}
        for k, (form, variant) in enumerate(CASES):
            z, labels, ids = _global_batch(k)
            lo = sum(SIZES[:rank])
            mine = slice(lo, lo + SIZES[rank])
            z_local = z[mine].clone().requires_grad_(True)
            loss = distributed_pixel_contrastive_loss(
                z_local, labels[mine], 0.1, form, image_ids=ids[mine], variant=variant, block_size=7
            )
            loss.backward()
            total = loss.detach().clone()
            dist.all_reduce(total)
            results[(form, variant)] = (float(total), z_local.grad)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # neither rank tears down gloo while the other may still use it
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_tcp_init(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for k, (form, variant) in enumerate(CASES):
        z, labels, ids = _global_batch(k)
        z = z.clone().requires_grad_(True)
        expected = pixel_contrastive_loss(
            z, labels, 0.1, form, image_ids=_global_image_ids(ids), variant=variant
        )
        expected.backward()
        assert float(expected.detach()) > 0
        for rank in range(2):
            total, grad = ranks[rank][(form, variant)]
            assert total == pytest.approx(float(expected.detach()), rel=1e-12), (form, variant)
            lo = sum(SIZES[:rank])
            torch.testing.assert_close(
                grad, z.grad[lo : lo + SIZES[rank]], rtol=1e-10, atol=1e-12, msg=str((form, variant, rank))
            )
