"""Tests for the Fashion-MNIST reader and the pixcon-fashion-scenes generator.

Most tests use a tiny fake Fashion-MNIST written as idx files (fast, no system package needed);
the tests marked `needs_fashion` use the real files and skip when they are absent.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixcon.data import synthetic
from pixcon.data.fashion import FASHION_CLASSES, find_fashion_mnist, load_fashion_mnist
from pixcon.data.folder import SegmentationFolder, read_ids
from pixcon.data.synthetic import (
    CLASS_NAMES,
    NUM_STUFF,
    PALETTE,
    SceneSources,
    generate_dataset,
    load_textures,
    render_image,
    render_scene,
    resolve_class_weights,
    scene_rng,
)


def _real_fashion_available() -> bool:
    try:
        find_fashion_mnist(None, "train")
        find_fashion_mnist(None, "test")
    except FileNotFoundError:
        return False
    return True


needs_fashion = pytest.mark.skipif(
    not _real_fashion_available(),
    reason="Fashion-MNIST idx files not found (apt-get install dataset-fashion-mnist, or set PIXCON_FASHION_MNIST)",
)


def _fake_items(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ellipses of random size and brightness, labels i % 10: (n, 28, 28) uint8, (n,) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(11, 17), rng.uniform(11, 17), rng.uniform(5, 13), rng.uniform(4, 13)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        images[i][inside] = rng.integers(90, 256, size=int(inside.sum()))
    return images, (np.arange(n) % 10).astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_fake_fashion(directory: Path, n_train: int = 60, n_test: int = 20, compress: bool = True) -> Path:
    """Writes a fake Fashion-MNIST in the standard idx layout."""
    directory.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = _fake_items(n, seed)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, 0x803, compress)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, 0x801, compress)
    return directory


@pytest.fixture(scope="module")
def fake_fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fake_fashion(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="module")
def fake_sources(fake_fashion: Path) -> SceneSources:
    return synthetic.load_scene_sources("train", fake_fashion)


SMALL = {"num_train": 4, "num_val": 1, "num_test": 1, "image_size": 48}


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- Fashion-MNIST reader


@pytest.mark.parametrize("compress", [True, False])
def test_load_fashion_roundtrip(tmp_path: Path, compress: bool) -> None:
    write_fake_fashion(tmp_path, n_train=12, n_test=5, compress=compress)
    images, labels = load_fashion_mnist(tmp_path, "train")
    expected, expected_labels = _fake_items(12, 0)
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, expected_labels)
    assert load_fashion_mnist(tmp_path, "test")[0].shape == (5, 28, 28)


def test_load_fashion_bad_magic_names_file(tmp_path: Path) -> None:
    write_fake_fashion(tmp_path, n_train=10, n_test=2)
    images, _ = _fake_items(10, 0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images[:, 0, 0], 0x801, True)  # a labels file
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*magic"):
        load_fashion_mnist(tmp_path, "train")


def test_load_fashion_missing_explains_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_fashion_mnist(tmp_path / "nowhere", "train")
    assert str(tmp_path / "nowhere") in str(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


def test_load_fashion_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_fashion(tmp_path, n_train=10, n_test=2)
    monkeypatch.setattr("pixcon.data.fashion.DEFAULT_FASHION_DIR", tmp_path / "missing")
    monkeypatch.setenv("PIXCON_FASHION_MNIST", str(tmp_path))
    assert load_fashion_mnist(None, "test")[0].shape == (2, 28, 28)


def test_load_fashion_unknown_split() -> None:
    with pytest.raises(ValueError, match="unknown Fashion-MNIST split"):
        load_fashion_mnist(None, "validation")


@needs_fashion
def test_real_fashion_mnist() -> None:
    images, labels = load_fashion_mnist(split="test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
    assert len(FASHION_CLASSES) == 10


# ---------------------------------------------------------------- render_scene


def test_textures_load_offline() -> None:
    textures = load_textures()
    assert len(textures) == NUM_STUFF
    assert all(t.ndim == 2 and t.dtype == np.uint8 and min(t.shape) >= 256 for t in textures)
    assert all(t.std() > 5 for t in textures)  # real textures, not flat images


@pytest.mark.parametrize("image_size", [32, 64, 97])
def test_mask_matches_pasted_silhouettes(fake_sources: SceneSources, image_size: int) -> None:
    probs = np.full(10, 0.1)
    for index in range(15):
        image, mask, placements = render_scene(
            scene_rng(3, "train", index), fake_sources, image_size=image_size, class_probs=probs
        )
        assert image.shape == (image_size, image_size, 3) and image.dtype == np.uint8
        assert mask.shape == (image_size, image_size) and mask.dtype == np.uint8
        assert 1 <= len(placements) <= 4
        expected = np.full((image_size, image_size), -1)
        for p in placements:  # paint order: later items cover earlier ones
            assert p.silhouette.any()
            assert p.class_id == NUM_STUFF + p.fashion_label
            expected[p.full_mask(image_size)] = p.class_id
        things = mask >= NUM_STUFF
        np.testing.assert_array_equal(things, expected >= 0)  # mask pixel is clothing <=> pasted
        np.testing.assert_array_equal(mask[things], expected[things])
        assert mask.max() < len(CLASS_NAMES)
        assert len(np.unique(mask[~things])) >= 1


def test_pasted_pixels_come_from_item_not_background(fake_sources: SceneSources) -> None:
    # Render the same scene twice with different items: only silhouette pixels may change.
    probs = np.full(10, 0.1)
    image, mask, placements = render_scene(
        scene_rng(0, "train", 7), fake_sources, image_size=64, class_probs=probs
    )
    blank = SceneSources(
        textures=fake_sources.textures,
        items_by_class=tuple(np.zeros_like(a) for a in fake_sources.items_by_class),
        source_indices_by_class=fake_sources.source_indices_by_class,
    )
    image0, _, placements0 = render_scene(scene_rng(0, "train", 7), blank, image_size=64, class_probs=probs)
    covered = np.zeros((64, 64), dtype=bool)
    for p, q in zip(placements, placements0, strict=True):
        covered |= p.full_mask(64) | q.full_mask(64)
    np.testing.assert_array_equal(image[~covered], image0[~covered])
    assert (image[mask >= NUM_STUFF] != image0[mask >= NUM_STUFF]).any()


def test_class_frequency_knob(fake_sources: SceneSources) -> None:
    names = list(FASHION_CLASSES)
    weights = resolve_class_weights({"bag": 0.0, "trouser": 20.0})
    probs = np.array([weights[n] for n in names]) / sum(weights.values())
    counts = np.zeros(len(CLASS_NAMES), dtype=np.int64)
    labels: list[int] = []
    for index in range(120):
        _, mask, placements = render_scene(
            scene_rng(0, "train", index), fake_sources, image_size=32, class_probs=probs
        )
        counts += np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
        labels += [p.fashion_label for p in placements]
    bag, trouser = NUM_STUFF + names.index("bag"), NUM_STUFF + names.index("trouser")
    assert counts[bag] == 0 and names.index("bag") not in labels
    assert labels.count(names.index("trouser")) > len(labels) / 2
    assert counts[trouser] == counts[NUM_STUFF:].max()


def test_resolve_class_weights_validation() -> None:
    assert resolve_class_weights(None) == dict.fromkeys(FASHION_CLASSES, 1.0)
    assert resolve_class_weights({"bag": 0.5})["bag"] == 0.5
    with pytest.raises(ValueError, match=r"unknown clothing class 'hat'.*ankle boot"):
        resolve_class_weights({"hat": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        resolve_class_weights({"bag": -1.0})
    with pytest.raises(ValueError, match="all clothing-class weights are 0"):
        resolve_class_weights(dict.fromkeys(FASHION_CLASSES, 0.0))


# ---------------------------------------------------------------- generate_dataset


def test_generate_layout_and_folder(tmp_path: Path, fake_fashion: Path) -> None:
    root = generate_dataset(tmp_path / "ds", fashion_path=fake_fashion, **SMALL)
    assert read_ids(root / "splits" / "train.txt") == [f"train_{i:05d}" for i in range(4)]
    assert read_ids(root / "splits" / "test.txt") == ["test_00000"]
    classes = yaml.safe_load((root / "classes.yaml").read_text())
    assert classes["name"] == "pixcon-fashion-scenes" and classes["ignore_index"] == 255
    assert classes["classes"] == list(CLASS_NAMES)
    assert len({tuple(c) for c in classes["palette"]}) == len(CLASS_NAMES) == len(PALETTE)
    meta = yaml.safe_load((root / "meta.yaml").read_text())
    assert meta["seed"] == 0 and meta["num_train"] == 4 and meta["version"] == synthetic.GENERATOR_VERSION
    assert Image.open(root / "images" / "train_00000.png").mode == "RGB"
    assert Image.open(root / "masks" / "train_00000.png").mode == "L"
    ds = SegmentationFolder(root, split="train")
    assert ds.num_classes == len(CLASS_NAMES) and ds.class_names == list(CLASS_NAMES)
    image, mask = ds[0]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
    assert not list(tmp_path.glob(".ds.tmp-*"))  # the temporary directory was renamed away


def test_generate_is_deterministic(tmp_path: Path, fake_fashion: Path) -> None:
    a = _all_files(generate_dataset(tmp_path / "a", seed=5, fashion_path=fake_fashion, **SMALL))
    b = _all_files(generate_dataset(tmp_path / "b", seed=5, fashion_path=fake_fashion, **SMALL))
    c = _all_files(generate_dataset(tmp_path / "c", seed=6, fashion_path=fake_fashion, **SMALL))
    assert a == b
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 12
    assert all(a[k] != c[k] for k in pngs if k.startswith("images"))


def test_any_image_can_be_regenerated(tmp_path: Path, fake_fashion: Path) -> None:
    root = generate_dataset(tmp_path / "ds", seed=2, fashion_path=fake_fashion, **SMALL)
    for split, index in (("train", 3), ("val", 0), ("test", 0)):
        image, mask, _ = render_image(split, index, seed=2, image_size=48, fashion_path=fake_fashion)
        name = f"{split}_{index:05d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(root / "images" / name)), image)
        np.testing.assert_array_equal(np.asarray(Image.open(root / "masks" / name)), mask)


def test_test_items_come_from_t10k(fake_fashion: Path) -> None:
    _, _, placements = render_image("test", 0, image_size=48, fashion_path=fake_fashion)
    _, _, val_placements = render_image("val", 0, image_size=48, fashion_path=fake_fashion)
    assert all(p.source_index < 20 for p in placements)  # fake t10k has 20 items
    assert all(p.source_index >= 50 for p in val_placements)  # val pool: last 1/6 of train


def test_cache_and_overwrite(tmp_path: Path, fake_fashion: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ds"
    generate_dataset(out, seed=0, fashion_path=fake_fashion, **SMALL)
    before = _all_files(out)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated a cached dataset")

    with monkeypatch.context() as m:
        m.setattr(synthetic, "_write_dataset", fail)
        assert generate_dataset(out, seed=0, fashion_path=fake_fashion, **SMALL) == out
    with pytest.raises(FileExistsError, match=r"seed: existing 0, requested 1.*overwrite=True"):
        generate_dataset(out, seed=1, fashion_path=fake_fashion, **SMALL)
    assert _all_files(out) == before
    generate_dataset(out, seed=1, fashion_path=fake_fashion, overwrite=True, **SMALL)
    assert yaml.safe_load((out / "meta.yaml").read_text())["seed"] == 1
    assert _all_files(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary leftovers


def test_refuses_foreign_directory(tmp_path: Path, fake_fashion: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a generated"):
        generate_dataset(out, fashion_path=fake_fashion, overwrite=True, **SMALL)
    assert (out / "thesis.tex").read_text() == "precious"


def test_failed_generation_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        generate_dataset(tmp_path / "ds", fashion_path=tmp_path / "no_fashion", **SMALL)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 8}, "image_size"),
        ({"num_train": -1}, "num_train"),
        ({"seed": 1.5}, "seed"),
        ({"class_frequencies": {"sock": 1.0}}, "unknown clothing class"),
    ],
)
def test_generate_validates_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path / "ds", **kwargs)  # type: ignore[arg-type]


@needs_fashion
def test_generate_with_real_fashion_mnist(tmp_path: Path) -> None:
    root = generate_dataset(tmp_path / "ds", num_train=3, num_val=1, num_test=2, image_size=48)
    ds = SegmentationFolder(root)
    assert len(ds) == 6
    _, mask = ds[0]
    assert (mask >= NUM_STUFF).any()
    _, _, placements = render_image("test", 1, image_size=48)
    images, _ = load_fashion_mnist(split="test")
    assert all(0 <= p.source_index < len(images) for p in placements)


# ---------------------------------------------------------------- the aux style (a second domain)


def test_default_style_is_unchanged_by_the_style_option(fake_fashion: Path) -> None:
    """Pinned from the generator before styles existed (same arrays, so the demo's data is too)."""
    import hashlib

    h = hashlib.sha256()
    for split, i in (("train", 0), ("train", 5), ("val", 1), ("test", 2)):
        image, mask, _ = render_image(
            split, i, seed=4, image_size=48, fashion_path=fake_fashion, class_frequencies={"bag": 0.3}
        )
        h.update(image.tobytes())
        h.update(mask.tobytes())
    assert h.hexdigest() == "ec0280f6415eecd9688ca8cba682345a334e9e56c83f40d19145c215bf9048c3"


def test_aux_style_dataset(tmp_path: Path, fake_fashion: Path) -> None:
    aux = synthetic.AUX_STYLE
    a = generate_dataset(tmp_path / "a", seed=5, fashion_path=fake_fashion, style="aux", **SMALL)
    b = generate_dataset(tmp_path / "b", seed=5, fashion_path=fake_fashion, style="aux", **SMALL)
    default = generate_dataset(tmp_path / "d", seed=5, fashion_path=fake_fashion, **SMALL)
    assert _all_files(a) == _all_files(b)  # same seed, same bytes
    images = [k for k in _all_files(a) if k.startswith("images")]
    assert all(_all_files(a)[k] != _all_files(default)[k] for k in images)
    classes = yaml.safe_load((a / "classes.yaml").read_text())
    assert classes["name"] == "pixcon-fashion-scenes-aux"
    assert classes["classes"] == ["coins", "paper", "cells", "top", "trouser", "footwear", "bag"]
    assert classes["clothing_groups"]["footwear"] == ["sandal", "sneaker", "ankle boot"]
    assert len(classes["palette"]) == 7 and classes["num_stuff_classes"] == 3
    assert yaml.safe_load((a / "meta.yaml").read_text())["style"] == "aux"
    assert "style" not in yaml.safe_load((default / "meta.yaml").read_text())  # old caches stay valid
    ds = SegmentationFolder(a, split="train")
    assert ds.num_classes == 7 and all(int(ds.mask(i).max()) < 7 for i in range(len(ds)))
    assert aux.thing_of_label[FASHION_CLASSES.index("dress")] == -1
    with pytest.raises(FileExistsError, match="style: existing 'aux', requested None"):
        generate_dataset(a, seed=5, fashion_path=fake_fashion, **SMALL)  # the cache knows the style


def test_aux_style_classes_and_statistics(fake_fashion: Path) -> None:
    aux = synthetic.AUX_STYLE
    sources = synthetic.load_scene_sources("train", fake_fashion, "aux")
    assert len(sources.textures) == 3
    probs = synthetic.style_class_probs(resolve_class_weights(None), "aux")
    assert probs[FASHION_CLASSES.index("dress")] == 0 and probs.sum() == pytest.approx(1)
    saturation = {"aux": [], "default": []}
    for style, src in (("aux", sources), ("default", synthetic.load_scene_sources("train", fake_fashion))):
        p = probs if style == "aux" else synthetic.style_class_probs(resolve_class_weights(None))
        for index in range(20):
            image, mask, placements = render_scene(
                scene_rng(0, "train", index, style), src, image_size=48, class_probs=p, style=style
            )
            if style == "aux":
                for pl in placements:
                    assert pl.class_id == 3 + aux.thing_of_label[pl.fashion_label]
                assert mask.max() < 7
            rgb = image.astype(np.float64) / 255
            saturation[style].append(float((rgb.max(-1) - rgb.min(-1)).mean()))
    assert np.mean(saturation["aux"]) < 0.75 * np.mean(saturation["default"])  # half the saturation
    # its random streams are its own: the same seed and index give another layout
    assert scene_rng(0, "train", 1, "aux").random() != scene_rng(0, "train", 1).random()


def test_style_errors(tmp_path: Path, fake_fashion: Path) -> None:
    with pytest.raises(
        ValueError, match=r"unknown scene style 'nope'; available: \['aux', 'coarse', 'default'\]"
    ):
        generate_dataset(tmp_path / "x", fashion_path=fake_fashion, style="nope", **SMALL)
    only_dress = dict.fromkeys(FASHION_CLASSES, 0.0) | {"dress": 1.0}
    with pytest.raises(ValueError, match="every clothing class that style .* draws has weight 0"):
        generate_dataset(
            tmp_path / "y", fashion_path=fake_fashion, style="aux", class_frequencies=only_dress, **SMALL
        )
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_generates_the_aux_style(tmp_path: Path, fake_fashion: Path) -> None:
    from pixcon.cli import main

    out = tmp_path / "aux"
    argv = ["data", "generate", "--out", str(out), "--style", "aux", "--num-train", "2", "--num-val", "1"]
    assert main([*argv, "--num-test", "1", "--image-size", "32", "--fashion-path", str(fake_fashion)]) == 0
    assert yaml.safe_load((out / "classes.yaml").read_text())["classes"][:3] == ["coins", "paper", "cells"]


def test_parse_class_frequencies() -> None:
    from pixcon.data.synthetic import parse_class_frequencies

    assert parse_class_frequencies("bag=0.1, ankle boot=2,") == {"bag": 0.1, "ankle boot": 2.0}
    for bad in ("bag", "bag=x", "=1e"):
        with pytest.raises(ValueError, match="must look like name=weight"):
            parse_class_frequencies(bad)


# ---------------------------------------------------------------- the coarse style (issue 20's learnable demo task)


def _dataset_digest(root: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_default_dataset_bytes_unchanged_by_the_coarse_style(tmp_path: Path, fake_fashion: Path) -> None:
    """Every file of a tiny default-style dataset, pinned from the generator before the coarse style."""
    root = generate_dataset(
        tmp_path / "ds",
        seed=3,
        num_train=3,
        num_val=1,
        num_test=1,
        image_size=40,
        fashion_path=fake_fashion,
        class_frequencies={"sneaker": 2.0},
    )
    assert _dataset_digest(root) == "1100b5bfca374e1d98cac3a0f6cd580a639ec54ddd0ec7922cf1fb27697042d7"


def test_coarse_style_dataset_is_deterministic(tmp_path: Path, fake_fashion: Path) -> None:
    a = generate_dataset(tmp_path / "a", seed=5, fashion_path=fake_fashion, style="coarse", **SMALL)
    b = generate_dataset(tmp_path / "b", seed=5, fashion_path=fake_fashion, style="coarse", **SMALL)
    c = generate_dataset(tmp_path / "c", seed=6, fashion_path=fake_fashion, style="coarse", **SMALL)
    d = generate_dataset(tmp_path / "d", seed=5, fashion_path=fake_fashion, **SMALL)
    assert _all_files(a) == _all_files(b)  # same seed, same bytes
    images = [k for k in _all_files(a) if k.startswith("images")]
    assert len(images) == 6
    assert all(_all_files(a)[k] != _all_files(c)[k] for k in images)  # another seed
    assert all(_all_files(a)[k] != _all_files(d)[k] for k in images)  # not the default style's streams
    for split, index in (("train", 2), ("test", 0)):  # any image can be regenerated alone
        image, mask, _ = render_image(
            split, index, seed=5, image_size=48, fashion_path=fake_fashion, style="coarse"
        )
        name = f"{split}_{index:05d}.png"
        np.testing.assert_array_equal(np.asarray(Image.open(a / "images" / name)), image)
        np.testing.assert_array_equal(np.asarray(Image.open(a / "masks" / name)), mask)


def test_coarse_style_classes_yaml(tmp_path: Path, fake_fashion: Path) -> None:
    root = generate_dataset(tmp_path / "ds", seed=0, fashion_path=fake_fashion, style="coarse", **SMALL)
    classes = yaml.safe_load((root / "classes.yaml").read_text())
    assert classes["name"] == "pixcon-fashion-scenes-coarse" and classes["ignore_index"] == 255
    assert classes["classes"] == ["brick", "grass", "gravel", "regolith", "top", "bottom", "footwear", "bag"]
    assert classes["num_stuff_classes"] == 4
    assert classes["clothing_groups"] == {
        "top": ["t-shirt/top", "pullover", "coat", "shirt"],
        "bottom": ["trouser", "dress"],
        "footwear": ["sandal", "sneaker", "ankle boot"],
        "bag": ["bag"],
    }
    # every Fashion-MNIST label belongs to exactly one group; colours are distinct
    assert sorted(k for group in classes["clothing_groups"].values() for k in group) == sorted(
        FASHION_CLASSES
    )
    assert len({tuple(c) for c in classes["palette"]}) == 8
    assert classes["palette"][:4] == [list(c) for c in PALETTE[:4]]  # the textures keep their colours
    assert yaml.safe_load((root / "meta.yaml").read_text())["style"] == "coarse"
    ds = SegmentationFolder(root, split="train")
    assert ds.num_classes == 8 and all(int(ds.mask(i).max()) < 8 for i in range(len(ds)))


def test_coarse_style_draws_every_group_equally_often() -> None:
    coarse = synthetic.COARSE_STYLE
    probs = synthetic.style_class_probs(resolve_class_weights(None), "coarse")
    per_group = [probs[list(labels)].sum() for labels in coarse.thing_labels]
    np.testing.assert_allclose(per_group, 0.25)
    weighted = synthetic.style_class_probs(resolve_class_weights({"bag": 2.0}), "coarse")
    assert weighted[FASHION_CLASSES.index("bag")] == pytest.approx(2 / 5)  # weights still apply, per label
    # the aux style does not balance: each label keeps its own weight
    aux = synthetic.style_class_probs(resolve_class_weights(None), "aux")
    np.testing.assert_allclose(aux[aux > 0], 1 / 9)


@pytest.mark.parametrize("image_size", [32, 64])
def test_coarse_style_masks_match_pasted_items(fake_fashion: Path, image_size: int) -> None:
    coarse = synthetic.COARSE_STYLE
    sources = synthetic.load_scene_sources("train", fake_fashion, "coarse")
    probs = synthetic.style_class_probs(resolve_class_weights(None), "coarse")
    counts = np.zeros(4, dtype=int)
    for index in range(20):
        image, mask, placements = render_scene(
            scene_rng(1, "train", index, "coarse"),
            sources,
            image_size=image_size,
            class_probs=probs,
            style="coarse",
        )
        assert image.shape == (image_size, image_size, 3) and mask.dtype == np.uint8
        assert 1 <= len(placements) <= 3
        expected = np.full((image_size, image_size), -1)
        for p in placements:  # paint order: later items cover earlier ones
            group = coarse.thing_of_label[p.fashion_label]
            assert p.class_id == NUM_STUFF + group
            counts[group] += 1
            longest = max(p.silhouette.shape)
            assert round(0.4 * image_size) - 1 <= longest <= round(0.7 * image_size) + 1
            expected[p.full_mask(image_size)] = p.class_id
        things = mask >= NUM_STUFF
        np.testing.assert_array_equal(things, expected >= 0)  # a mask pixel is clothing <=> pasted
        np.testing.assert_array_equal(mask[things], expected[things])
        assert mask.max() < 8
    assert (counts > 0).all()  # every group appears


def test_coarse_style_hue_prior(fake_fashion: Path) -> None:
    """Visible item pixels of class k have a hue within k / 4 +- 0.15 (the hue is uniform otherwise)."""
    import colorsys

    sources = synthetic.load_scene_sources("train", fake_fashion, "coarse")
    probs = synthetic.style_class_probs(resolve_class_weights(None), "coarse")
    checked = 0
    for index in range(15):
        image, mask, _ = render_scene(
            scene_rng(2, "train", index, "coarse"), sources, image_size=64, class_probs=probs, style="coarse"
        )
        for k in range(4):
            pixels = image[mask == NUM_STUFF + k].astype(np.float64) / 255
            bright = pixels[(pixels.max(-1) > 0.5) & (np.ptp(pixels, axis=-1) > 0.25)]  # hue well defined
            for r, g, b in bright[:20]:
                hue = colorsys.rgb_to_hsv(r, g, b)[0]
                distance = abs((hue - k / 4 + 0.5) % 1.0 - 0.5)  # on the colour circle
                assert distance <= 0.15 + 0.03, (index, k, hue)  # + rounding to uint8
                checked += 1
    assert checked > 100
    default_hues = [synthetic.DEFAULT_STYLE.hue_spread, synthetic.AUX_STYLE.hue_spread]
    assert default_hues == [None, None]


def test_cli_generates_the_coarse_style(tmp_path: Path, fake_fashion: Path) -> None:
    from pixcon.cli import main

    out = tmp_path / "coarse"
    argv = ["data", "generate", "--out", str(out), "--style", "coarse", "--num-train", "2", "--num-val", "1"]
    assert main([*argv, "--num-test", "1", "--image-size", "32", "--fashion-path", str(fake_fashion)]) == 0
    assert yaml.safe_load((out / "classes.yaml").read_text())["classes"][4:] == [
        "top",
        "bottom",
        "footwear",
        "bag",
    ]
