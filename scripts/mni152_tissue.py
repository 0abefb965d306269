"""Writes a pixcon NIfTI dataset from the MNI152 2009 template that nilearn's wheel ships.

The wheel of nilearn (https://nilearn.github.io) bundles the ICBM 2009a nonlinear symmetric MNI152
template (Fonov et al., NeuroImage 2011) as three 197 x 233 x 189 volumes at 1 mm:

    nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz   T1, masked to the brain
    nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz   grey-matter probability
    nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz   white-matter probability

This script downloads the wheel with pip (``pip download nilearn==VERSION --no-deps``; nilearn is
neither installed nor imported) or takes a wheel already on disk (``--wheel``), extracts the three
files and writes::

    OUT/images/mni152.nii      the T1 volume, unchanged (uint8, uncompressed: slices are memory-mapped)
    OUT/labels/mni152.nii      tissue labels (uint8), same shape and affine
    OUT/classes.yaml           background, grey matter, white matter, other
    OUT/splits/{train,val,test}.txt   slice ranges along --axis, interleaved, --gap slices apart
    OUT/mni152.yaml            a pixcon config whose data section reads the dataset
    OUT/source.json            nilearn version, SHA-256 of the wheel and of the three files, the rule

Tissue rule. The probabilities are stored as uint8 (p = value / 255). Outside the brain mask of the
T1 template (T1 == 0; the template is skull-stripped) the label is 0, background. Inside, the label is
the argmax of (p_gm, p_wm, p_other = 1 - p_gm - p_wm): 1 grey matter, 2 white matter, 3 other (mostly
cerebrospinal fluid, with vessels and partial-volume voxels); ties go to the lower class. No
voxel outside the mask has p_gm or p_wm >= 0.5, so the mask drops no voxel that is mostly grey or
white matter.

Splits. Slices along --axis that hold brain (T1 > 0) are cut into --blocks rounds of train, val and
test ranges in the proportions of --fractions, each range --gap slices from the next, so every split
samples the whole brain from bottom to top and no two ranges of different splits are closer than
--gap (pixcon refuses closer ranges: neighbouring slices are near copies).

    python scripts/mni152_tissue.py --out data/mni152
    pixcon data check data/mni152/mni152.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

NILEARN_VERSION = "0.14.1"
MEMBER = "nilearn/datasets/data/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
PARTS = ("t1", "gm", "wm")
CLASSES = ("background", "grey matter", "white matter", "other")
PALETTE = ((0, 0, 0), (200, 120, 120), (240, 240, 240), (80, 140, 220))
VOLUME = "mni152"


def download_wheel(version: str, dest: Path) -> Path:
    """``pip download nilearn==version --no-deps`` into `dest`; returns the wheel."""
    cmd = [sys.executable, "-m", "pip", "download", f"nilearn=={version}", "--no-deps", "--only-binary=:all:"]
    subprocess.run([*cmd, "-d", str(dest)], check=True)
    (wheel,) = dest.glob("nilearn-*.whl")
    return wheel


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extract(wheel: Path, dest: Path) -> dict[str, Path]:
    """The three template files of the wheel, written to `dest` (part name -> path)."""
    out = {}
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for part in PARTS:
            member = MEMBER.format(part)
            if member not in names:
                raise SystemExit(f"{wheel} has no {member}; try another --nilearn-version")
            out[part] = dest / Path(member).name
            out[part].write_bytes(zf.read(member))
    return out


def tissue_labels(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """The rule of the module docstring: (X, Y, Z) uint8 in {0, 1, 2, 3}.

    Args:
        t1: (X, Y, Z) T1 intensities; 0 outside the brain mask.
        gm, wm: (X, Y, Z) grey- and white-matter probabilities in [0, 1].
    """
    other = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = np.stack([gm, wm, other]).argmax(axis=0) + 1  # (X, Y, Z); argmax keeps the first of ties
    return np.where(t1 > 0, tissue, 0).astype(np.uint8)


def interleaved_ranges(
    start: int, stop: int, fractions: dict[str, float], blocks: int, gap: int
) -> dict[str, list[tuple[int, int]]]:
    """Half-open slice ranges: `blocks` rounds of one range per split, `gap` slices between ranges.

    Raises:
        ValueError: Too few slices for the ranges and gaps.
    """
    segments = blocks * len(fractions)
    usable = (stop - start) - gap * (segments - 1)
    if usable < segments:
        raise ValueError(f"{stop - start} slices cannot hold {segments} ranges {gap} slices apart")
    total = sum(fractions.values())
    exact = {name: usable * f / total for name, f in fractions.items()}
    sizes = {name: int(v) for name, v in exact.items()}
    for name in sorted(exact, key=lambda n: sizes[n] - exact[n])[: usable - sum(sizes.values())]:
        sizes[name] += 1  # largest remainders
    ranges: dict[str, list[tuple[int, int]]] = {name: [] for name in fractions}
    pos = start
    for b in range(blocks):
        for name in fractions:
            length = sizes[name] // blocks + (1 if b < sizes[name] % blocks else 0)
            if length < 1:
                raise ValueError(f"split {name!r} gets no slice in round {b}; use fewer --blocks")
            ranges[name].append((pos, pos + length))
            pos += length + gap
    return ranges


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    parser.add_argument("--wheel", type=Path, help="a nilearn wheel on disk (else pip downloads one)")
    parser.add_argument("--nilearn-version", default=NILEARN_VERSION)
    parser.add_argument("--axis", type=int, default=2, choices=[0, 1, 2], help="voxel axis of the slices")
    parser.add_argument("--gap", type=int, default=10, help="slices between ranges of different splits")
    parser.add_argument("--blocks", type=int, default=2, help="rounds of train/val/test ranges")
    parser.add_argument("--fractions", default="0.6,0.2,0.2", help="train,val,test shares of the slices")
    args = parser.parse_args(argv)

    import nibabel as nib
    import torch

    torch.set_num_threads(1)
    from pixcon.config import load_config
    from pixcon.data.registry import check_dataset

    out: Path = args.out
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel if args.wheel is not None else download_wheel(args.nilearn_version, Path(tmp))
        files = extract(wheel, Path(tmp))
        images: dict[str, Any] = {part: nib.load(str(path)) for part, path in files.items()}
        t1 = np.asarray(images["t1"].dataobj)  # (X, Y, Z) uint8
        gm, wm = (np.asarray(images[p].dataobj, dtype=np.float64) / 255.0 for p in ("gm", "wm"))
        for part, img in images.items():
            if img.shape != t1.shape or not np.allclose(img.affine, images["t1"].affine):
                raise SystemExit(f"{files[part]} does not share the T1's grid")
        source = {
            "nilearn_wheel": wheel.name,
            "wheel_sha256": sha256(wheel.read_bytes()),
            "files": {MEMBER.format(p): sha256(files[p].read_bytes()) for p in PARTS},
        }
        affine, header = images["t1"].affine, images["t1"].header

    labels = tissue_labels(t1, gm, wm)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(t1, affine, header), out / "images" / f"{VOLUME}.nii")
    nib.save(nib.Nifti1Image(labels, affine), out / "labels" / f"{VOLUME}.nii")
    palette = "\n".join(f"  - [{r}, {g}, {b}]" for r, g, b in PALETTE)
    (out / "classes.yaml").write_text(f"classes: {list(CLASSES)}\npalette:\n{palette}\nignore_index: 255\n")

    other_axes = tuple(a for a in range(3) if a != args.axis)
    brain = np.nonzero((t1 > 0).any(axis=other_axes))[0]  # slices holding brain
    shares = [float(f) for f in args.fractions.split(",")]
    fractions = dict(zip(("train", "val", "test"), shares, strict=True))
    ranges = interleaved_ranges(int(brain[0]), int(brain[-1]) + 1, fractions, args.blocks, args.gap)
    (out / "splits").mkdir(exist_ok=True)
    letter = "ijk"[args.axis]
    for name, spans in ranges.items():
        lines = [f"# {name}: slices along axis {letter} ({args.axis}), {args.gap} slices from other splits"]
        lines += [f"{VOLUME}[{letter}={a}:{b}]" for a, b in spans]
        (out / "splits" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    config = out / "mni152.yaml"
    config.write_text(
        "# written by scripts/mni152_tissue.py\n"
        f"data:\n  format: nifti\n  root: {out}\n  nifti_axis: {args.axis}\n  nifti_min_gap: {args.gap}\n"
    )
    source["rule"] = "0 where T1 == 0; else 1 + argmax(p_gm, p_wm, 1 - p_gm - p_wm), p = uint8 / 255"
    source["splits"] = {name: [f"{a}:{b}" for a, b in spans] for name, spans in ranges.items()}
    (out / "source.json").write_text(json.dumps(source, indent=2) + "\n")

    counts = np.bincount(labels.ravel(), minlength=len(CLASSES))
    print(f"wrote {out} from {source['nilearn_wheel']} (volume {'x'.join(map(str, t1.shape))}, 1 mm)")
    print("voxels per class:")
    for name, count in zip(CLASSES, counts, strict=True):
        print(f"  {name:<13} {count:>10,}  {100 * count / labels.size:5.2f}%")
    print(f"splits along axis {letter} ({args.axis}), brain slices {brain[0]}..{brain[-1]}, gap {args.gap}:")
    for name, spans in ranges.items():
        where = (slice(None),) * args.axis
        fg = [np.bincount(labels[(*where, slice(a, b))].ravel(), minlength=len(CLASSES)) for a, b in spans]
        total = np.sum(fg, axis=0)
        n = sum(b - a for a, b in spans)
        print(f"  {name:<5} {n:>3} slices {spans}  voxels per class {total.tolist()}")
    report = check_dataset(load_config(config).data)
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
