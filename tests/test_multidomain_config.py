"""The multidomain config section: domain entries, what they inherit, names, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pixcon.cli import datasets_overrides
from pixcon.config import (
    DOMAIN_INHERITED,
    ConfigError,
    DataConfig,
    from_dict,
    load_config,
    replace,
    resolve_domains,
    to_dict,
    with_domains,
)


def test_single_domain_config_has_one_domain() -> None:
    cfg = load_config(overrides=["data.root=data/fashion-scenes"])
    (primary,) = resolve_domains(cfg)
    assert (primary.name, primary.key, primary.data) == ("fashion-scenes", "data", cfg.data)
    assert cfg.multidomain.weight == 0.1 and cfg.multidomain.temperature == 0.1
    assert (cfg.multidomain.form, cfg.multidomain.level, cfg.multidomain.positives) == (
        "supcon",
        "image",
        "domain",
    )


def test_domains_inherit_the_training_procedure_not_the_dataset() -> None:
    cfg = load_config(
        overrides=[
            "data.image_size=64",
            "data.batch_size=4",
            "data.color_jitter=0.1",
            "data.labeled_split=primary_5pct.txt",
            "data.classes_file=primary_classes.yaml",
            "multidomain.domains=[{root: /data/aux, batch_size: 6}, {root: /data/voc, format: voc}]",
        ]
    )
    primary, aux, voc = resolve_domains(cfg)
    assert [d.name for d in (primary, aux, voc)] == ["fashion-scenes", "aux", "voc"]
    assert [d.key for d in (aux, voc)] == ["multidomain.domains[0]", "multidomain.domains[1]"]
    assert (aux.data.image_size, aux.data.color_jitter, aux.data.batch_size) == (64, 0.1, 6)
    assert voc.data.batch_size == 4 and voc.data.format == "voc"
    for dom in (aux, voc):  # dataset keys take the defaults, never the primary's
        assert dom.data.labeled_split is None and dom.data.classes_file is None
    defaults = DataConfig()
    assert set(DOMAIN_INHERITED) < set(to_dict(cfg)["data"])
    assert aux.data.train_split == defaults.train_split
    # resolved when used: a later change of the primary's batch size reaches the domains that follow it
    smaller = replace(cfg, data={"batch_size": 2})
    assert [d.data.batch_size for d in resolve_domains(smaller)] == [2, 6, 2]
    assert from_dict(to_dict(cfg)) == cfg  # saved and read back unchanged


def test_domain_names() -> None:
    cfg = load_config(
        overrides=[
            "multidomain.primary_name=main",
            "multidomain.domains=[{root: '/x/my data'}, {root: ., name: b}]",
        ]
    )
    assert [d.name for d in resolve_domains(cfg)] == ["main", "my_data", "b"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["multidomain.domains=[{root: /a/x}, {root: /b/x}]"],
            "domain name 'x' is already used by multidomain.domains[0]",
        ),
        (
            ["data.root=/p/x", "multidomain.domains=[{root: /a/x}]"],
            "already used by multidomain.primary_name",
        ),
        (["multidomain.domains=[{name: a}]"], "multidomain.domains[0].root: every extra domain needs"),
        (
            ["multidomain.domains=[{root: a, batch_size: 0}]"],
            "multidomain.domains[0].batch_size: 0 is out of range",
        ),
        (
            ["multidomain.domains=[{root: a, image_size: 40}]"],
            "multidomain.domains[0].image_size: 40 is not divisible",
        ),
        (["multidomain.domains=[{root: a, formt: voc}]"], "unknown key multidomain.domains[0].formt"),
        (["multidomain.domains=[{root: a, format: png}]"], "multidomain.domains[0].format: must be one of"),
        (["multidomain.domains=[3]"], "multidomain.domains[0]: expected a mapping"),
        (
            ["multidomain.primary_name=-x", "multidomain.domains=[{root: a}]"],
            "multidomain.primary_name: domain name '-x'",
        ),
        (["multidomain.positives=domain_class"], "needs pixel embeddings (multidomain.level: pixel)"),
        (["multidomain.weight=-1"], "multidomain.weight: -1.0 is out of range"),
        (["multidomain.temperature=0"], "multidomain.temperature: 0.0 is out of range"),
    ],
)
def test_config_errors_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    assert message in str(info.value)


def test_datasets_flag(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    spec = tmp_path / "c.yml"
    spec.write_text(yaml.safe_dump({"data": {"root": str(b), "test_split": "val"}}))
    cfg = load_config(overrides=datasets_overrides(f"main={a}, bee={b},{spec}"))
    primary, bee, c = resolve_domains(cfg)
    assert (primary.name, primary.data.root) == ("main", str(a))
    assert (bee.name, bee.data.root) == ("bee", str(b))
    assert (c.name, c.data.test_split) == ("b", "val")  # named after its folder
    with pytest.raises(ConfigError, match="already used"):
        load_config(overrides=datasets_overrides(f"{a},{b},{spec}"))  # b twice
    with pytest.raises(FileNotFoundError, match="no such dataset folder or YAML file"):
        datasets_overrides(f"{a},{tmp_path / 'missing'}")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="neither a dataset folder nor a .yaml file"):
        datasets_overrides(f"{a},{tmp_path / 'notes.txt'}")
    spec.write_text("just text")
    with pytest.raises(ConfigError, match="needs a data section"):
        datasets_overrides(f"{a},{spec}")
    spec.write_text(yaml.safe_dump({"name": "prim", "data": {"test_split": "val"}}))
    with pytest.raises(ConfigError, match=r"c.yml: the data section needs a root"):
        datasets_overrides(f"{spec},{b}")  # the primary too: it would silently take data.root's default
    odd = tmp_path / "x=1"  # a folder whose name holds '=' is a path, not NAME=PATH
    odd.mkdir()
    primary, other = resolve_domains(load_config(overrides=datasets_overrides(f"{odd},{b}")))
    assert (primary.data.root, other.data.root) == (str(odd), str(b))


def test_with_domains_helper(tmp_path: Path) -> None:
    base = load_config(
        overrides=["data.root=data/fashion-scenes", "data.labeled_split=l.txt", "train.seed=3"]
    )
    cfg = with_domains(base, [tmp_path / "aux"], names=["aux2"])
    assert cfg.train.objective == "ce" and cfg.train.seed == 3  # the run's own objective
    primary, aux = resolve_domains(cfg)
    assert (primary.data.labeled_split, aux.name, aux.data.root) == ("l.txt", "aux2", str(tmp_path / "aux"))
    with pytest.raises(ConfigError, match="1 folders but 2 names"):
        with_domains(base, [tmp_path], names=["a", "b"])
    with pytest.raises(ConfigError, match="at least one extra dataset"):
        with_domains(base, [])


def test_the_removed_multidomain_objective_names_its_replacement() -> None:
    with pytest.raises(
        ConfigError, match=r"train.objective: 'multidomain' was removed; .*multidomain.domains"
    ):
        load_config(overrides=["train.objective=multidomain"])


def test_stream_seeds() -> None:
    from pixcon.train.data import stream_seed

    assert stream_seed(7, 0) == 7  # the primary keeps the single-domain order
    seeds = {stream_seed(s, k) for s in (-1, 0, 1, 7) for k in (1, 2, 3)}
    assert len(seeds) == 12  # distinct per (seed, stream), negative seeds included
    assert stream_seed(-1, 1) == stream_seed(-1, 1) and stream_seed(-1, 1) >= 0
