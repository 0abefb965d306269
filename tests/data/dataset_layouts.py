"""Writers of tiny datasets in the exact on-disk layouts of VOC, Cityscapes, Potsdam and Vaihingen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from pixcon.data.isprs import ISPRS_PALETTE
from pixcon.data.voc import voc_colormap

H, W = 40, 56  # image size of the VOC and Cityscapes fixtures


def _noise(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def voc_mask(k: int) -> np.ndarray:
    """(H, W) uint8: class (k % 20) + 1 in the right half, background left, a boundary column of 255."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[:, W // 2 :] = k % 20 + 1
    mask[:, W // 2 - 1] = 255
    return mask


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mask, mode="P")
    img.putpalette([v for rgb in voc_colormap(256) for v in rgb])
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


@dataclass
class VOCFixture:
    root: Path  # the VOCdevkit folder
    train: list[str]
    val: list[str]
    aug_only: list[str]  # ids with a SegmentationClassAug mask only (SBD)

    @property
    def voc2012(self) -> Path:
        return self.root / "VOC2012"


def write_voc(root: Path) -> VOCFixture:
    """VOCdevkit/VOC2012 with 3 train, 2 val ids, SBD masks for 2 more ids and 1 unlabelled image."""
    rng = np.random.default_rng(0)
    fx = VOCFixture(
        root=root,
        train=["2007_000032", "2007_000039", "2008_000002"],
        val=["2007_000033", "2009_000001"],
        aug_only=["2010_000005", "2011_000003"],
    )
    base = fx.voc2012
    (base / "JPEGImages").mkdir(parents=True)
    for k, i in enumerate([*fx.train, *fx.val, *fx.aug_only, "2012_999999"]):
        Image.fromarray(_noise(rng, H, W)).save(base / "JPEGImages" / f"{i}.jpg", quality=90)
        if i in fx.train or i in fx.val:
            save_palette_png(voc_mask(k), base / "SegmentationClass" / f"{i}.png")
        if i in fx.train or i in fx.aug_only or i == fx.val[0]:
            # SBD masks are plain index PNGs; +1 tells them apart from the VOC ones in the tests.
            aug = np.where(voc_mask(k) == 255, 255, (voc_mask(k) + 1) % 21).astype(np.uint8)
            (base / "SegmentationClassAug").mkdir(exist_ok=True)
            Image.fromarray(aug).save(base / "SegmentationClassAug" / f"{i}.png")
    sets = base / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in fx.train))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in fx.val))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in fx.train + fx.val))
    return fx


# labelIds written into the Cityscapes masks, and the train ids they must become.
CITYSCAPES_LABEL_IDS = np.array([7, 8, 26, 33, 0, 9, 3, 24], dtype=np.uint8)
CITYSCAPES_TRAIN_IDS = np.array([0, 1, 13, 18, 255, 255, 255, 11], dtype=np.int64)


def cityscapes_label_ids(k: int) -> np.ndarray:
    """(H, W) uint8: vertical stripes cycling through CITYSCAPES_LABEL_IDS, shifted by k."""
    cols = (np.arange(W) // 7 + k) % len(CITYSCAPES_LABEL_IDS)
    return np.broadcast_to(CITYSCAPES_LABEL_IDS[cols], (H, W)).copy()


@dataclass
class CityscapesFixture:
    root: Path
    ids: dict[str, list[str]] = field(default_factory=dict)  # split -> ids


def write_cityscapes(root: Path) -> CityscapesFixture:
    """leftImg8bit + gtFine with 3 train (2 cities), 2 val and 1 test image."""
    rng = np.random.default_rng(1)
    fx = CityscapesFixture(root=root)
    names = {
        "train": [
            "aachen/aachen_000000_000019",
            "aachen/aachen_000001_000019",
            "bremen/bremen_000000_000019",
        ],
        "val": ["frankfurt/frankfurt_000000_000294", "lindau/lindau_000000_000019"],
        "test": ["berlin/berlin_000000_000019"],
    }
    for split, ids in names.items():
        for k, i in enumerate(ids):
            image = fx.root / "leftImg8bit" / split / f"{i}_leftImg8bit.png"
            mask = fx.root / "gtFine" / split / f"{i}_gtFine_labelIds.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            mask.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_noise(rng, H, W)).save(image)
            Image.fromarray(cityscapes_label_ids(k)).save(mask)
            # Files of the real release that the reader must not confuse with the labelIds.
            Image.fromarray(np.zeros((H, W, 3), dtype=np.uint8)).save(
                mask.with_name(f"{Path(i).name}_gtFine_color.png")
            )
        fx.ids[split] = sorted(ids)
    return fx


TILE_H, TILE_W = 70, 90


def isprs_classes(seed: int, h: int = TILE_H, w: int = TILE_W) -> np.ndarray:
    """(h, w) class ids 0..5 in random 10 px blocks (every class appears)."""
    rng = np.random.default_rng(seed)
    coarse = rng.permutation(np.arange(((h + 9) // 10) * ((w + 9) // 10)) % 6).reshape((h + 9) // 10, -1)
    return coarse.repeat(10, 0).repeat(10, 1)[:h, :w].astype(np.int64)


def isprs_colors(classes: np.ndarray) -> np.ndarray:
    """(h, w) class ids (255 = boundary) -> (h, w, 3) legend colours (black boundary)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(ISPRS_PALETTE)] = ISPRS_PALETTE
    return table[classes]


def erode(classes: np.ndarray) -> np.ndarray:
    """Marks pixels next to a class change as boundary (255), like the noBoundary files."""
    out = classes.copy()
    edge = np.zeros(classes.shape, dtype=bool)
    edge[:, 1:] |= classes[:, 1:] != classes[:, :-1]
    edge[1:, :] |= classes[1:, :] != classes[:-1, :]
    out[edge] = 255
    return out


@dataclass
class ISPRSFixture:
    root: Path
    rgbir: dict[str, np.ndarray] = field(default_factory=dict)  # tile -> (h, w, 4) uint8
    classes: dict[str, np.ndarray] = field(default_factory=dict)  # tile -> (h, w) int64
    eroded: dict[str, np.ndarray] = field(default_factory=dict)  # tile -> (h, w) int64, 255 on boundaries


POTSDAM_TILES = ("top_potsdam_2_10", "top_potsdam_2_11", "top_potsdam_2_13")  # train, train, test


def write_potsdam(root: Path, tiles: tuple[str, ...] = POTSDAM_TILES) -> ISPRSFixture:
    """The Potsdam release layout: 2_Ortho_RGB, 3_Ortho_IRRG, 4_Ortho_RGBIR, 5_Labels_all[_noBoundary]."""
    fx = ISPRSFixture(root=root)
    for k, tile in enumerate(tiles):
        rgbir = np.random.default_rng(10 + k).integers(0, 256, (TILE_H, TILE_W, 4), dtype=np.uint8)
        classes = isprs_classes(k)
        fx.rgbir[tile], fx.classes[tile], fx.eroded[tile] = rgbir, classes, erode(classes)
        files = {
            f"2_Ortho_RGB/{tile}_RGB.tif": rgbir[..., :3],
            f"3_Ortho_IRRG/{tile}_IRRG.tif": rgbir[..., [3, 0, 1]],
            f"4_Ortho_RGBIR/{tile}_RGBIR.tif": rgbir,
            f"5_Labels_all/{tile}_label.tif": isprs_colors(classes),
            f"5_Labels_all_noBoundary/{tile}_label_noBoundary.tif": isprs_colors(fx.eroded[tile]),
        }
        for name, array in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            extra = {"extrasamples": ["unspecified"]} if array.shape[-1] == 4 else {}
            tifffile.imwrite(root / name, np.ascontiguousarray(array), photometric="rgb", **extra)
    return fx


VAIHINGEN_TILES = (
    "top_mosaic_09cm_area1",
    "top_mosaic_09cm_area3",
    "top_mosaic_09cm_area2",
)  # train, train, test


def write_vaihingen(root: Path, flat: bool = False) -> ISPRSFixture:
    """The Vaihingen zips unpacked (top/, gts_for_participants/, eroded COMPLETE) or a flat copy."""
    fx = ISPRSFixture(root=root)
    for k, tile in enumerate(VAIHINGEN_TILES):
        irrg = np.random.default_rng(20 + k).integers(0, 256, (TILE_H, TILE_W, 3), dtype=np.uint8)
        classes = isprs_classes(5 + k)
        fx.rgbir[tile], fx.classes[tile], fx.eroded[tile] = irrg, classes, erode(classes)
        if flat:
            files = {f"top/{tile}.tif": irrg, f"{tile}.tif": isprs_colors(classes)}
        else:
            files = {
                f"ISPRS_semantic_labeling_Vaihingen/top/{tile}.tif": irrg,
                f"ISPRS_semantic_labeling_Vaihingen/gts_for_participants/{tile}.tif": isprs_colors(classes),
            }
        files[f"ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE/{tile}_noBoundary.tif"] = (
            isprs_colors(fx.eroded[tile])
        )
        for name, array in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(root / name, array, photometric="rgb")
    return fx


NIFTI_SHAPE = (12, 10, 8)  # (X, Y, Z): three different lengths, so a slice along the wrong axis shows
NIFTI_AFFINE = np.array(
    [[-1.0, 0.0, 0.0, 20.0], [0.0, 1.2, 0.0, -30.0], [0.0, 0.0, 2.5, -10.0], [0.0, 0.0, 0.0, 1.0]]
)  # LAS, anisotropic voxels


def nifti_label(shape: tuple[int, int, int] = NIFTI_SHAPE) -> np.ndarray:
    """(X, Y, Z) uint8: class 1 in a box over z 2..5, class 2 inside it at z 3..4, one ignore voxel at z 7.

    Along z, slices 0, 1, 6 and 7 hold no class but 0 (slice 7 holds the ignore index besides).
    """
    label = np.zeros(shape, dtype=np.uint8)
    label[3:9, 2:8, 2:6] = 1
    label[5:7, 4:6, 3:5] = 2
    label[0, 0, 7] = 255
    return label


def nifti_image(seed: int, shape: tuple[int, int, int] = NIFTI_SHAPE, channels: int = 0) -> np.ndarray:
    """(X, Y, Z) float32 (or (X, Y, Z, C) with channels > 0): noise on a scale that differs per seed."""
    rng = np.random.default_rng(seed)
    full = (*shape, channels) if channels else shape
    return (rng.normal(0.0, 1.0, full) * 20.0 * (seed + 1) + 100.0 * (seed + 1)).astype(np.float32)


@dataclass
class NiftiFixture:
    root: Path
    images: dict[str, np.ndarray] = field(default_factory=dict)  # volume -> voxel values as stored (scaled)
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # volume -> (X, Y, Z) class ids


def save_nifti(
    array: np.ndarray, path: Path, affine: np.ndarray = NIFTI_AFFINE, slope: float | None = None
) -> Path:
    """Writes `array` as NIfTI-1 (.nii or .nii.gz by the name); `slope` stores int16 voxels scaled by it."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    if slope is None:
        nib.save(nib.Nifti1Image(array, affine), path)
        return path
    img = nib.Nifti1Image(np.round(array / slope).astype(np.int16), affine)
    img.header.set_slope_inter(slope, 0.0)
    nib.save(img, path)
    return path


def write_nifti(
    root: Path,
    volumes: tuple[str, ...] = ("case_a", "case_b", "case_c"),
    suffix: str = ".nii.gz",
    classes: bool = True,
    splits: bool = True,
) -> NiftiFixture:
    """images/<volume><suffix> and labels/<volume><suffix>, a classes.yaml (background, organ, lesion),
    and split files by volume (train: all but the last volume, val: the last; one volume: train).

    The second volume is stored as int16 with scl_slope 0.5, so readers must apply the header's scaling.
    """
    fx = NiftiFixture(root=root)
    for k, name in enumerate(volumes):
        image, label = nifti_image(k), nifti_label()
        slope = 0.5 if k == 1 else None
        save_nifti(image, root / "images" / f"{name}{suffix}", slope=slope)
        save_nifti(label, root / "labels" / f"{name}{suffix}")
        fx.images[name] = image if slope is None else np.round(image / slope).astype(np.int16) * slope
        fx.labels[name] = label.astype(np.int64)
    if classes:
        (root / "classes.yaml").write_text("classes: [background, organ, lesion]\nignore_index: 255\n")
    if splits:
        (root / "splits").mkdir(parents=True, exist_ok=True)
        train, val = (volumes[:-1], volumes[-1:]) if len(volumes) > 1 else (volumes, ())
        (root / "splits" / "train.txt").write_text("".join(f"{v}\n" for v in train))
        if val:
            (root / "splits" / "val.txt").write_text("".join(f"{v}\n" for v in val))
    return fx
