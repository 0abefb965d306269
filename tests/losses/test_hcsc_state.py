"""HCSC's state in the state dict (resume = no interruption) and its bank under DDP (gloo ranks)."""

from __future__ import annotations

import io
import logging
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from pixcon.config import RunConfig, replace
from pixcon.losses import hcsc
from pixcon.losses.hcsc import HCSCLoss

# A small bank that is full after two calls and re-clustered every second call after that.
CFG = replace(
    RunConfig(),
    hcsc=dict(
        bank_size=64, bank_per_step=32, refresh_every=2, num_prototypes=[8, 2], max_pixels=256, kmeans_iters=5
    ),
)


def _tcp_init() -> str:
    """A TCP rendezvous on a free local port (a FileStore's teardown occasionally aborted a rank)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


def _round_trip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as the checkpoints are loaded."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def _assert_same_state(a: HCSCLoss, b: HCSCLoss) -> None:
    assert (a.bank.count, a.bank.pointer, a.bank.refreshes) == (
        b.bank.count,
        b.bank.pointer,
        b.bank.refreshes,
    )
    assert (a.calls, a.calls_since_refresh) == (b.calls, b.calls_since_refresh)
    assert torch.equal(a.bank.memory, b.bank.memory)
    ha, hb = a.bank.hierarchy, b.bank.hierarchy
    for key in ("centroids", "parents", "assignments", "concentration"):
        for x, y in zip(getattr(ha, key), getattr(hb, key), strict=True):
            assert torch.equal(x, y), key
    assert torch.equal(a.generator.get_state(), b.generator.get_state())
    assert torch.equal(a.shared_generator.get_state(), b.shared_generator.get_state())


def test_objective_resumed_from_its_state_dict_continues_as_if_uninterrupted() -> None:
    from pixcon.models.segmenter import create_segmenter
    from pixcon.objectives.base import DataInfo, create_objective

    info = DataInfo(num_classes=3, ignore_index=255, in_channels=3)
    g = torch.Generator().manual_seed(0)
    batch = (torch.rand(2, 3, 64, 64, generator=g), torch.randint(3, (2, 64, 64), generator=g))
    steps, stop = 5, 3  # refreshes at calls 2 and 4: one before the interruption, one after

    def setup():
        torch.manual_seed(0)
        model = create_segmenter(num_classes=3)
        params = [p for n, p in model.named_parameters() if not n.startswith("net.segmentation_head")]
        return (
            model,
            torch.optim.SGD(params, lr=0.05, momentum=0.9),
            create_objective("hcsc", CFG, model, info),
        )

    def step(objective, model, opt, i: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(100 + i)  # the global RNG (pixel sampling) as a resumed run restores it
        terms = objective(model, batch)
        opt.zero_grad()
        sum(terms.values()).backward()
        opt.step()
        return {k: v.detach() for k, v in terms.items()}

    model, opt, straight = setup()
    expected = [step(straight, model, opt, i) for i in range(steps)]

    model, opt, first = setup()
    for i in range(stop):
        step(first, model, opt, i)
    assert first.loss.bank.refreshes == 1
    saved = _round_trip(first.state_dict())
    assert set(saved) == {"loss._extra_state"}
    resumed = create_objective("hcsc", CFG, model, info)
    resumed.load_state_dict(saved)
    _assert_same_state(resumed.loss, first.loss)
    got = [step(resumed, model, opt, i) for i in range(stop, steps)]

    assert resumed.loss.bank.refreshes == straight.loss.bank.refreshes == 2
    _assert_same_state(resumed.loss, straight.loss)
    for i, (a, b) in enumerate(zip(expected[stop:], got, strict=True)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (stop + i, k)
    assert all(float(t["proto"]) > 0 for t in got)


def _dense(seed: int, b: int = 2, h: int = 8, d: int = 6, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    proj = F.normalize(torch.randn(b, d, h, h, generator=g), dim=1)
    masks = torch.randint(3, (b, 4 * h, 4 * h), generator=g)
    return proj.to(device).requires_grad_(True), masks.to(device)


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
def test_loss_state_is_restored_onto_the_embeddings_device(device: str) -> None:
    def make() -> HCSCLoss:
        return HCSCLoss(
            num_prototypes=(4, 2), bank_size=32, bank_per_step=16, refresh_every=2, kmeans_iters=3
        )

    inputs = [_dense(seed, device=device) for seed in range(6)]
    straight, first = make(), make()
    expected = [straight(*x) for x in inputs]
    for x in inputs[:3]:
        first(*x)
    state = _round_trip(first.state_dict())["_extra_state"]
    assert state["bank"]["memory"].device.type == "cpu"
    assert all(t.device.type == "cpu" for t in state["bank"]["hierarchy"]["centroids"])
    resumed = make()
    resumed.load_state_dict({"_extra_state": state})
    assert resumed.bank.ready and resumed.bank.memory.device.type == "cpu"
    got = [resumed(*x) for x in inputs[3:]]
    assert resumed.bank.memory.device.type == device
    assert resumed.bank.hierarchy.centroids[0].device.type == device
    for a, b in zip(expected[3:], got, strict=True):
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_state_of_another_bank_is_refused_and_a_missing_state_is_tolerated(caplog) -> None:
    loss = HCSCLoss(num_prototypes=(4, 2), bank_size=32, bank_per_step=16)
    loss(*_dense(0))
    state = loss.state_dict()
    with pytest.raises(ValueError, match="capacity"):
        HCSCLoss(num_prototypes=(4, 2), bank_size=48).load_state_dict(state)
    fresh = HCSCLoss(num_prototypes=(4, 2), bank_size=32)
    with caplog.at_level(logging.WARNING, logger="pixcon.losses.hcsc"):
        fresh.load_state_dict({})  # a checkpoint from before the state was saved
    assert "bank starts empty" in caplog.text and fresh.bank.count == 0
    with pytest.raises(RuntimeError, match="Unexpected"):
        fresh.load_state_dict({**state, "stray": torch.zeros(1)})


def test_a_resumed_rank_other_than_the_saving_one_reseeds_its_stream(monkeypatch) -> None:
    loss = HCSCLoss(num_prototypes=(4, 2), bank_size=32, bank_per_step=16, seed=5)
    for seed in range(3):
        loss(*_dense(seed))
    state = loss.state_dict()  # saved by rank 0
    monkeypatch.setattr(hcsc, "_rank", lambda: 1)
    other = HCSCLoss(num_prototypes=(4, 2), bank_size=32, bank_per_step=16, seed=5)
    other.load_state_dict(state)
    other._bind_generator()
    assert torch.equal(
        other.generator.get_state(),
        torch.Generator().manual_seed(5 + 1 + hcsc._RESUME_SEED_STRIDE * 3).get_state(),
    )
    fresh = HCSCLoss(seed=5)
    fresh._bind_generator()  # a fresh rank 1 starts from seed + 1
    assert torch.equal(fresh.generator.get_state(), torch.Generator().manual_seed(6).get_state())
    monkeypatch.setattr(hcsc, "_rank", lambda: 0)
    same = HCSCLoss(num_prototypes=(4, 2), bank_size=32, bank_per_step=16, seed=5)
    same.load_state_dict(state)
    same._bind_generator()  # the saving rank continues its stream exactly
    assert torch.equal(same.generator.get_state(), loss.generator.get_state())


# --- DDP: two gloo ranks ------------------------------------------------------------------------

SHAPES = {0: (2, 4), 1: (1, 4)}  # (B, h) per rank: 32 and 16 pixels, so the ranks push 20 and 16
CALLS = 5


def _rank_inputs(rank: int, call: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank 0's embeddings have a positive first coordinate, rank 1's a negative one."""
    b, h = SHAPES[rank]
    proj, masks = _dense(1000 * rank + call, b=b, h=h)
    proj = proj.detach()
    proj[:, 0] = proj[:, 0].abs() * (1 if rank == 0 else -1)
    # No gradient: the bank is filled all the same (training mode, grad mode on), and the spawned
    # processes skip the checkpointed blocks (whose first use imports torch._dynamo, ~2 s).
    return proj, masks


def _ddp_worker(rank: int, init_method: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)  # the same global RNG on both ranks: only the HCSC streams differ
        kw = dict(num_prototypes=(8, 2), bank_per_step=20, refresh_every=2, kmeans_iters=3, max_pixels=10_000)
        big, small = HCSCLoss(bank_size=64, **kw), HCSCLoss(bank_size=24, **kw)  # small: 36 > 24 gathered
        counts = []
        for call in range(CALLS):
            x = _rank_inputs(rank, call)
            for loss in (big, small):
                out = loss(*x)
                assert all(torch.isfinite(v) for v in out.values())
            counts.append(big.bank.count)
        result = {}
        for name, loss in (("big", big), ("small", small)):
            h = loss.bank.hierarchy
            result[name] = {
                "memory": loss.bank.memory,
                "pointer": loss.bank.pointer,
                "refreshes": loss.bank.refreshes,
                "calls_since_refresh": loss.calls_since_refresh,
                "hierarchy": [*h.centroids, *h.parents, *h.assignments, *h.concentration],
                "generator": loss.generator.get_state(),
                "shared_generator": loss.shared_generator.get_state(),
            }
        result["counts"] = counts
        fresh = HCSCLoss(seed=3)
        fresh._bind_generator()
        result["fresh_generator"] = fresh.generator.get_state()  # this rank's stream: seed + rank
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # neither rank tears down gloo while the other may still use it
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not available")
def test_ddp_ranks_share_one_bank_of_both_ranks_embeddings(tmp_path: Path) -> None:
    mp.spawn(_ddp_worker, args=(_tcp_init(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert r0["counts"] == r1["counts"] == [36, 64, 64, 64, 64]  # 20 + 16 per call, gathered
    for r, result in enumerate((r0, r1)):
        assert torch.equal(result["fresh_generator"], torch.Generator().manual_seed(3 + r).get_state())
    pixels = [
        torch.cat(
            [F.normalize(_rank_inputs(r, c)[0].permute(0, 2, 3, 1).reshape(-1, 6)) for c in range(CALLS)]
        )
        for r in range(2)
    ]
    for name in ("big", "small"):
        a, b = r0[name], r1[name]
        assert torch.equal(a["memory"], b["memory"]), name
        assert all(torch.equal(x, y) for x, y in zip(a["hierarchy"], b["hierarchy"], strict=True)), name
        assert (a["pointer"], a["refreshes"], a["calls_since_refresh"]) == (
            b["pointer"],
            b["refreshes"],
            b["calls_since_refresh"],
        )
        assert a["refreshes"] == 2  # big: at calls 2 and 4; small (full after one call): 1 and 3
        assert torch.equal(a["shared_generator"], b["shared_generator"])
        assert not torch.equal(a["generator"], b["generator"])  # seed + rank: different selections
        # every stored row is one of the pixels of the rank its sign names, and both ranks are there
        memory = a["memory"]
        from_rank0 = memory[:, 0] > 0
        assert 0 < int(from_rank0.sum()) < memory.shape[0], name
        for rows, r in ((memory[from_rank0], 0), (memory[~from_rank0], 1)):
            nearest = (rows @ pixels[r].t()).max(dim=1).values
            torch.testing.assert_close(nearest, torch.ones_like(nearest))
    # the small bank holds the last call's 24 of the 36 gathered rows, drawn by the shared generator
    shared = torch.Generator().manual_seed(0 + hcsc._SHARED_SEED_OFFSET)
    for _ in range(CALLS):
        keep = torch.randperm(36, generator=shared)[:24].sort().values
    assert torch.equal(r0["small"]["memory"][:, 0] > 0, keep < 20)
    # the big bank's last call pushed 20 rows of rank 0 then 16 of rank 1 (rank order)
    last = r0["big"]["memory"][(r0["big"]["pointer"] - 36 + torch.arange(36)) % 64]
    assert bool((last[:20, 0] > 0).all()) and bool((last[20:, 0] < 0).all())
