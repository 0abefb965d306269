"""Multi-domain training end to end: CLI runs on two datasets with different classes, checkpoints
with domain metadata, --init-from a plain checkpoint, exact resume, --domain, multi-domain
contrastive pretraining and prototype-head fine-tuning, and the errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixcon.checkpoint import CheckpointError, load_checkpoint
from pixcon.cli import main
from pixcon.config import load_config, resolve_domains, with_domains
from pixcon.inference import imprint_head, load_model, network_from_state
from pixcon.models import num_domains, segmenter_from_config, use_domain
from pixcon.models.domain_bn import DomainBatchNorm2d
from pixcon.objectives import DataInfo, create_objectives
from pixcon.recipes import stage_defaults
from pixcon.train import run_training
from pixcon.train.build import freeze_unused, prepare_network

# the CLI runs' projection head: the recipes' one layer (pixcon.recipes.VALIDATED)
CLI_MODEL = ["model.proj_dim=16", "model.proj_layers=1"]
TINY = ["--set", "data.image_size=32", "--set", "data.batch_size=2", "--set", "model.proj_dim=16", "--quiet"]
MD_STEPS = 3


@pytest.fixture(scope="module")
def runs(
    tiny_dataset: Path, tiny_dataset_b: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """A plain 2-step CE run on the first dataset, and a multi-domain run of both initialised from it."""
    root = tmp_path_factory.mktemp("multidomain")
    plain, multi = root / "plain", root / "md"
    assert main(["train", "--data-root", str(tiny_dataset), "--out", str(plain), "--steps", "2", *TINY]) == 0
    argv = ["train", "--datasets", f"{tiny_dataset},bee={tiny_dataset_b}", "--out", str(multi)]
    argv += ["--init-from", str(plain / "last.pt"), "--steps", str(MD_STEPS), "--set", "train.log_every=1"]
    assert main([*argv, *TINY]) == 0
    return {"plain": plain / "last.pt", "md": multi / "last.pt", "dir": multi}


def test_checkpoint_records_every_domain(
    runs: dict[str, Path], tiny_dataset: Path, tiny_dataset_b: Path
) -> None:
    state = load_checkpoint(runs["md"])
    assert state["kind"] == "ce" and state["step"] == MD_STEPS
    domains = state["domains"]
    assert [d["name"] for d in domains] == ["tiny", "bee"]
    assert [d["num_classes"] for d in domains] == [3, 5]
    assert [d["class_names"] for d in domains] == [["c0", "c1", "c2"], [f"c{k}" for k in range(5)]]
    assert [d["ignore_index"] for d in domains] == [255, 255]
    assert [d["data"]["root"] for d in domains] == [str(tiny_dataset), str(tiny_dataset_b)]
    assert domains[1]["data"]["batch_size"] == 2  # inherited from the primary's data section
    # the top level describes the primary domain, as for a single-domain run
    assert (state["num_classes"], state["class_names"]) == (3, ["c0", "c1", "c2"])
    assert "net.segmentation_head.heads.1.0.weight" in state["model"]
    assert "regulariser.image_projection.0.weight" in state["objective"]  # the regulariser's own head
    metrics = state["metrics"]
    assert set(metrics["domains"]) == {"tiny", "bee"}
    assert metrics["miou"] == metrics["domains"]["tiny"]["miou"]  # the headline score: the primary's
    mious = [metrics["domains"][n]["miou"] for n in ("tiny", "bee")]
    assert metrics["mean_miou"] == pytest.approx(sum(mious) / 2)
    text = (runs["dir"] / "metrics.csv").read_text()
    for key in ("train/ce_tiny", "train/ce_bee", "train/domain", "val/miou", "val/bee/miou", "val/mean_miou"):
        assert key in text, key
    run = json.loads((runs["dir"] / "run.json").read_text())
    assert {"labeled", "val", "labeled:bee", "val:bee"} <= set(run["data"])
    saved = yaml.safe_load((runs["dir"] / "config.yaml").read_text())
    assert saved["train"]["objective"] == "ce"
    assert saved["multidomain"]["domains"] == [{"root": str(tiny_dataset_b), "name": "bee"}]


def test_evaluate_predict_diagnose_take_a_domain(
    runs: dict[str, Path], tiny_dataset_b: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = str(runs["md"])
    capsys.readouterr()
    assert main(["evaluate", ckpt, "--split", "test", "--json", "--quiet"]) == 0
    primary = json.loads(capsys.readouterr().out)
    assert primary["domain"] == "tiny" and set(primary["iou_per_class"]) == {"c0", "c1", "c2"}
    assert main(["evaluate", ckpt, "--split", "test", "--json", "--quiet", "--domain", "bee"]) == 0
    bee = json.loads(capsys.readouterr().out)
    assert bee["domain"] == "bee" and len(bee["iou_per_class"]) == 5

    image = tiny_dataset_b / "images" / "test_000.png"
    assert (
        main(["predict", ckpt, str(image), "--out", str(tmp_path / "pred"), "--domain", "bee", "--quiet"])
        == 0
    )
    mask = np.asarray(Image.open(tmp_path / "pred" / "test_000_mask.png"))
    assert mask.shape == (32, 32) and mask.max() < 5

    out = tmp_path / "diag"
    argv = ["diagnose", ckpt, "--domain", "bee", "--num-pixels", "100", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    assert json.loads((out / "diagnose.json").read_text())["domain"] == "bee"

    capsys.readouterr()
    assert main(["evaluate", ckpt, "--domain", "nope", "--quiet"]) == 2
    assert "has no domain 'nope'; its domains: ['tiny', 'bee']" in capsys.readouterr().err
    assert main(["evaluate", ckpt, "--prototype-head", "--domain", "bee", "--json", "--quiet"]) == 0
    proto = json.loads(capsys.readouterr().out)  # the domain's own labeled images and classes
    assert proto["domain"] == "bee" and len(proto["head"]["labeled_pixels"]) == 5
    assert main(["evaluate", str(runs["plain"]), "--domain", "bee", "--quiet"]) == 2  # plain: unchanged
    assert "single-domain checkpoint" in capsys.readouterr().err
    assert main(["evaluate", str(runs["plain"]), "--split", "test", "--quiet"]) == 0


def test_checkpoint_loads_back_into_a_multidomain_network(runs: dict[str, Path]) -> None:
    state = load_checkpoint(runs["md"])
    md = network_from_state(state)  # strict loading: the same network
    assert num_domains(md) == 2 and not md.training
    x = torch.rand(2, 3, 40, 36)
    for d, name in enumerate(["tiny", "bee"]):
        plain, view = load_model(runs["md"], domain=name)
        with use_domain(md, d):
            torch.testing.assert_close(plain(x), md(x))
            torch.testing.assert_close(plain.project(x), md.project(x))
        assert (view["domain"], view["num_classes"]) == (name, [3, 5][d])
        assert view["config"]["data"]["root"] == state["domains"][d]["data"]["root"]


def test_init_from_a_plain_checkpoint_starts_every_domain_from_its_batch_norm(runs: dict[str, Path]) -> None:
    plain = load_checkpoint(runs["plain"])
    cfg = load_config(overrides=CLI_MODEL)
    model = prepare_network(_segmenter(cfg, 3), cfg, plain, runs["plain"], [3, 5], ["tiny", "bee"])
    assert num_domains(model) == 2
    bns = {n: m for n, m in model.named_modules() if isinstance(m, DomainBatchNorm2d)}
    assert bns
    for name, dbn in bns.items():
        for d in range(2):
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                torch.testing.assert_close(
                    getattr(dbn.bns[d], key), plain["model"][f"{name}.{key}"], rtol=0, atol=0
                )
    # the primary keeps the plain run's head (same classes); the other domain's head is new
    heads = model.net.segmentation_head.heads
    torch.testing.assert_close(heads[0][0].weight, plain["model"]["net.segmentation_head.0.weight"])
    # end to end: every domain's counter continued from the plain run's (2 steps) for 3 steps
    # (the pixel projection head runs in neither run: CE, and the image-level regulariser)
    trained = load_checkpoint(runs["md"])["model"]
    counters = {k: int(v) for k, v in trained.items() if k.endswith("num_batches_tracked") and ".bns." in k}
    used = [c for k, c in counters.items() if not k.startswith("projection.")]
    assert used and all(c == 2 + MD_STEPS for c in used)
    assert all(c == 0 for k, c in counters.items() if k.startswith("projection."))


def test_resume_equals_an_uninterrupted_run(
    tiny_dataset: Path, tiny_dataset_b: Path, tmp_path: Path, crash_after_first_checkpoint: list[int]
) -> None:
    # pixel level: the class-balanced pixel sampling draws from the RNG the checkpoint restores
    sets = ["data.image_size=32", "data.batch_size=2", "model.proj_dim=16", "train.eval_every=2"]
    sets += ["multidomain.level=pixel", "multidomain.max_pixels=64", "data.color_jitter=0.2"]
    # the uninterrupted run through the library function, the interrupted one through the CLI (with
    # the defaults of recipe ce, which the CLI takes)
    cfg = load_config(
        defaults=stage_defaults("ce", "train"),
        overrides=[
            *sets,
            f"data.root={tiny_dataset}",
            f"train.out_dir={tmp_path / 'full'}",
            "train.steps=4",
            "train.progress=false",
        ],
    )
    run_training(with_domains(cfg, [tiny_dataset_b], names=["bee"]))
    full = tmp_path / "full" / "last.pt"
    argv = ["train", "--datasets", f"{tiny_dataset},bee={tiny_dataset_b}", "--out", str(tmp_path / "cut")]
    argv += ["--steps", "4", "--quiet", *[a for kv in sets for a in ("--set", kv)]]
    calls = crash_after_first_checkpoint.arm()
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert calls == [2]  # died right after the step-2 checkpoint
    calls.restore()
    assert main([*argv, "--resume"]) == 0

    a, b = load_checkpoint(full), load_checkpoint(tmp_path / "cut" / "last.pt")
    assert a["step"] == b["step"] == 4 and a["domains"] == b["domains"]
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=0, atol=0, msg=k)
    assert a["metrics"]["domains"] == b["metrics"]["domains"]


def test_mixed_precision_run(tiny_dataset: Path, tiny_dataset_b: Path, tmp_path: Path) -> None:
    argv = ["train", "--datasets", f"{tiny_dataset},{tiny_dataset_b}", "--out", str(tmp_path / "bf16")]
    argv += ["--steps", "1", "--precision", "bf16-mixed", "--set", "data.eval_batch_size=1", *TINY]
    assert main(argv) == 0
    state = load_checkpoint(tmp_path / "bf16" / "last.pt")
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values())
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("sets", [[], ["multidomain.level=pixel"], ["multidomain.weight=0"]])
def test_every_trainable_parameter_gets_a_gradient(sets: list[str]) -> None:
    """What DDP needs (without find_unused_parameters): after the loop froze what the objective
    does not use, one step's loss reaches every parameter left trainable."""
    cfg = load_config(overrides=["model.proj_dim=8", *sets])
    model = prepare_network(_segmenter(cfg, 3), cfg, None, None, [3, 4], ["a", "b"])
    infos = [DataInfo(3, 255, 3), DataInfo(4, 255, 3)]
    objective = create_objectives("ce", cfg, model, infos, ["a", "b"])
    freeze_unused(model, objective)
    batch = [(torch.rand(2, 3, 32, 32), torch.randint(0, k, (2, 32, 32))) for k in (3, 4)]
    sum(objective(model.train(), batch).values()).backward()
    params = [*model.named_parameters(), *objective.named_parameters()]
    unused = [n for n, p in params if p.requires_grad and p.grad is None]
    assert not unused, unused[:5]
    frozen = {n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad}
    # the pixel projection head trains at the pixel level only; the image head exists only where
    # it trains (image level, weight > 0)
    assert frozen == (set() if "multidomain.level=pixel" in sets else {"projection"})
    image_head = objective.regulariser is not None and objective.regulariser.image_projection is not None
    assert image_head == (sets == [])


@pytest.mark.slow  # two processes: about 20 s on 2 CPU cores; `make test-slow`
def test_two_process_ddp_run(
    tiny_dataset: Path, tiny_dataset_b: Path, tmp_path: Path, pixcon_subprocess: Callable[[list[str]], None]
) -> None:
    # Every rank draws a batch of every domain each step; no head or BN copy is left unused.
    out = tmp_path / "ddp"
    argv = [
        "train", "--datasets", f"{tiny_dataset},{tiny_dataset_b}", "--out", str(out), "--steps", "2",
        "--devices", "2", "--strategy", "ddp", "--set", "train.accelerator=cpu", *TINY,
    ]  # fmt: skip
    pixcon_subprocess(argv)
    final = json.loads((out / "final.json").read_text())["val"]
    assert set(final["domains"]) == {"tiny", "bee"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--datasets", "{a},{a}"], "domain name 'tiny' is already used"),
        (["train", "--datasets", "{a},/nonexistent/aux"], "/nonexistent/aux: no such dataset folder"),
        (["train", "--datasets", "{a}"], "at least two datasets"),
        (["train", "--datasets", "{a},{b}", "--data-root", "{a}"], "leave out --data-root"),
        (["train", "--datasets", "{a},x y={b}"], "domain name 'x y' must start"),
        (
            ["pretrain", "--set", "train.objective=multidomain", "--data-root", "{a}"],
            "'multidomain' was removed",
        ),
        (["train", "--datasets", "{a},{empty}"], "splits/train.txt"),
        (["train", "--datasets", "{a},{yaml}"], "a domain file holds a data section and optionally a name"),
    ],
)
def test_clear_errors(
    argv: list[str],
    message: str,
    tiny_dataset: Path,
    tiny_dataset_b: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "empty").mkdir()
    bad_yaml = tmp_path / "aux.yaml"
    bad_yaml.write_text(yaml.safe_dump({"data": {"root": str(tiny_dataset_b)}, "optim": {"lr": 0.1}}))
    paths = {"a": tiny_dataset, "b": tiny_dataset_b, "empty": tmp_path / "empty", "yaml": bad_yaml}
    argv = [arg.format(**paths) for arg in argv]
    assert main([*argv, "--out", str(tmp_path / "run"), "--steps", "1", *TINY]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_domain_yaml_file_gives_a_domain_its_own_keys(
    tiny_dataset: Path, tiny_dataset_b: Path, tmp_path: Path
) -> None:
    from pixcon.cli import _run_config, build_parser

    split = tmp_path / "bee_labeled.txt"
    split.write_text("train_000\ntrain_001\n")
    spec = tmp_path / "bee.yaml"
    spec.write_text(
        yaml.safe_dump({"name": "bee", "data": {"root": str(tiny_dataset_b), "labeled_split": str(split)}})
    )
    args = build_parser().parse_args(["train", "--datasets", f"main={tiny_dataset},{spec}", *TINY])
    cfg = _run_config(args)
    primary, bee = resolve_domains(cfg)
    assert (primary.name, bee.name) == ("main", "bee")
    assert bee.data.labeled_split == str(split) and primary.data.labeled_split is None
    assert bee.data.image_size == primary.data.image_size == 32
    assert cfg.train.objective == "ce"


def test_init_from_with_other_class_counts_starts_those_heads_fresh(runs: dict[str, Path]) -> None:
    cfg = load_config(overrides=CLI_MODEL)
    md_state, plain = load_checkpoint(runs["md"]), load_checkpoint(runs["plain"])
    # a multi-domain checkpoint ([3, 5] classes) into a run whose second domain has 4 classes
    model = prepare_network(_segmenter(cfg, 3), cfg, md_state, runs["md"], [3, 4], names=["tiny", "bee"])
    heads = model.net.segmentation_head.heads
    assert heads[1][0].weight.shape[0] == 4  # fresh
    torch.testing.assert_close(
        heads[0][0].weight, md_state["model"]["net.segmentation_head.heads.0.0.weight"]
    )
    shared = "net.encoder.conv1.weight"
    torch.testing.assert_close(model.state_dict()[shared], md_state["model"][shared])
    # a plain 3-class checkpoint into a single-domain 5-class run: everything but the head
    single = prepare_network(_segmenter(cfg, 5), cfg, plain, runs["plain"], [5], ["tiny"])
    assert single.net.segmentation_head[0].weight.shape[0] == 5
    torch.testing.assert_close(
        single.net.encoder.conv1.weight, plain["model"]["net.encoder.conv1.weight"], rtol=0, atol=0
    )


def test_init_from_needs_the_same_domains_in_the_same_order(runs: dict[str, Path]) -> None:
    cfg = load_config(overrides=CLI_MODEL)
    state = load_checkpoint(runs["md"])
    with pytest.raises(CheckpointError, match=r"domains \['tiny', 'bee'\], this run has \['bee', 'tiny'\]"):
        prepare_network(_segmenter(cfg, 5), cfg, state, runs["md"], [5, 3], names=["bee", "tiny"])


def _segmenter(cfg, num_classes: int):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    return segmenter_from_config(cfg.model, num_classes, 3)


def test_multidomain_contrastive_pretraining_then_prototype_head_finetuning(
    tiny_dataset: Path, tiny_dataset_b: Path, tmp_path: Path
) -> None:
    """Any objective trains on several domains: contrast on both, then CE fine-tuning of both from
    each domain's own prototype head."""
    datasets = ["--datasets", f"{tiny_dataset},bee={tiny_dataset_b}"]
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    argv = ["pretrain", *datasets, "--objective", "contrast", "--out", str(pre), "--steps", "2"]
    assert main([*argv, "--set", "multidomain.level=pixel", "--set", "model.proj_layers=1", *TINY]) == 0
    state = load_checkpoint(pre / "last.pt")
    assert state["kind"] == "contrast" and [d["name"] for d in state["domains"]] == ["tiny", "bee"]
    text = (pre / "metrics.csv").read_text()
    assert all(key in text for key in ("train/contrast_tiny", "train/contrast_bee", "train/domain"))
    argv = ["finetune", *datasets, "--init-from", str(pre / "last.pt"), "--head-init", "prototypes"]
    argv += ["--out", str(ft), "--steps", "1", "--set", "model.proj_layers=1", "--set", "optim.lr=1e-9"]
    assert main([*argv, *TINY]) == 0
    # each domain's head started as the nearest-class-mean classifier of its own labeled pixels (a
    # learning rate of 1e-9 leaves it there)
    pretrained = network_from_state(load_checkpoint(pre / "last.pt"))
    tuned = load_checkpoint(ft / "last.pt")["model"]
    for d, (name, root) in enumerate([("tiny", tiny_dataset), ("bee", tiny_dataset_b)]):
        _, view = load_model(ft / "last.pt", domain=name)
        data = load_config(overrides=[f"data.root={root}", "data.image_size=32"]).data
        with use_domain(pretrained, d):
            head = imprint_head(
                pretrained,
                data,
                (root / "splits" / "train.txt").read_text().split(),
                batch_size=16,
                device=torch.device("cpu"),
                pretrained_by="contrast",
            )
        assert view["num_classes"] == len(head.counts) == [3, 5][d]
        weight = tuned[f"net.segmentation_head.heads.{d}.0.weight"]
        torch.testing.assert_close(
            weight, pretrained.net.segmentation_head.heads[d][0].weight, atol=1e-5, rtol=0
        )
    final = json.loads((ft / "final.json").read_text())["val"]
    assert set(final["domains"]) == {"tiny", "bee"}
