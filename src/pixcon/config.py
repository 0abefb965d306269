"""Run configuration: frozen dataclasses with defaults in code, YAML files and ``--set`` overrides.

Every key is checked before any work starts: unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the dotted key (``optim.lr``) and what is allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class DataConfig:
    format: Literal["folder", "voc", "cityscapes", "potsdam", "vaihingen", "nifti"] = (
        "folder"  # the layout of root (docs/datasets.md)
    )
    root: str = "data/fashion-scenes"  # dataset folder, in the layout of `format`
    classes_file: str | None = (
        None  # folder: classes YAML (names, palette, ignore_index); None = root/classes.yaml
    )
    mask_type: Literal["index", "color"] = (
        "index"  # folder: index PNGs, or RGB masks decoded with the palette
    )
    sbd: bool = False  # voc: train split "trainaug" from SBD's SegmentationClassAug (10,582 images)
    bands: Literal["rgb", "irrg", "rgbir"] = "rgb"  # potsdam: input bands (vaihingen has irrg only)
    patch_size: int = 512  # potsdam/vaihingen: tiles are cut into patches of this size
    patch_stride: int | None = None  # potsdam/vaihingen: None = patch_size (no overlap)
    eroded_labels: bool = False  # potsdam/vaihingen: boundary-eroded ground truth (for evaluation)
    nifti_axis: int = 2  # nifti: voxel axis the volumes are sliced along (0 = i, 1 = j, 2 = k)
    nifti_window_low: float = 0.5  # nifti: percentile of each volume's intensities that maps to 0
    nifti_window_high: float = 99.5  # nifti: percentile that maps to 1 (per volume, per channel)
    nifti_slice_size: list[int] | None = None  # nifti: [H, W] every slice is resampled to; None = native
    nifti_skip_empty: bool = False  # nifti: drop slices whose label is only class 0 and ignore
    nifti_min_gap: int = 10  # nifti: slices required between ranges of one volume in different splits
    nifti_image_dir: str = "images"  # nifti: folder of image volumes under root (e.g. imagesTr)
    nifti_label_dir: str = "labels"  # nifti: folder of label volumes under root (e.g. labelsTr)
    nifti_cache_dir: str | None = None  # nifti: folder keeping per-volume windows (JSON); None = recompute
    train_split: str = "train"  # splits/<name>.txt: the training pool
    val_split: str = "val"  # the validation split (scored during training); missing: no validation
    test_split: str = "test"  # the split `pixcon evaluate` and the demo score
    labeled_split: str | None = None  # file of labeled ids (see `pixcon split`); None = whole train split
    pseudo_masks: str | None = (
        None  # folder of <id>.png masks replacing the dataset's (`pixcon pseudo-label`)
    )
    image_size: int = 96  # training crop size
    eval_size: int | None = None  # resize for evaluation; None = native size
    scale_min: float = 0.5  # random resized crop scale range (scale_min, 1)
    color_jitter: float = 0.4  # strength of brightness/contrast/saturation jitter; 0 disables
    hflip: bool = True  # random horizontal flips in training
    batch_size: int = 8  # training images per step (per process under DDP)
    eval_batch_size: int = 16  # images per forward pass in validation
    num_workers: int = 0  # 0 keeps data order and augmentation exactly reproducible
    value_range: list[float] | None = (
        None  # [lo, hi] scaling non-8-bit images; None = measured at training start
    )


# The data.format names: the command lines' --format choices (tests/test_registries.py checks them
# against the format registry, pixcon.data.registry.FORMATS)
DATA_FORMATS: tuple[str, ...] = typing.get_args(typing.get_type_hints(DataConfig)["format"])


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["deeplabv3plus", "deeplabv3", "unet", "fpn"] = "deeplabv3plus"  # the smp architecture
    encoder: str = "resnet18"  # any segmentation-models-pytorch encoder name
    encoder_weights: str | None = (
        None  # a local encoder state dict, or a weights name smp has for the encoder (imagenet): smp loads it
    )
    in_channels: int | None = None  # input bands; None = from the dataset (4 for Potsdam RGBIR)
    proj_dim: int = 256  # projection head output D
    proj_layers: int = 2  # 1-3 layers of 1x1 conv (+ BN + ReLU between)


# which pixel pairs the supervised contrast counts (pixcon.losses.contrastive.pair_scopes)
LossVariant = Literal["batch", "within", "cross"]
# the registered objectives (pixcon.objectives.OBJECTIVES; a test keeps the two equal)
ObjectiveName = Literal[
    "ce", "contrast", "joint", "glcnet", "dense_simclr", "directclr", "hcsc", "claws", "ariel"
]


@dataclass(frozen=True)
class LossConfig:
    temperature: float = 0.1  # tau; Zhao et al. use 0.07-0.1
    form: Literal["zhao", "supcon"] = (
        "zhao"  # zhao: each positive against the anchor's negatives (Zhao et al.); supcon: L_out
    )
    variant: LossVariant = (
        "batch"  # pixel pairs: the whole batch, within one image, or across image pairs (Zhao et al.)
    )
    max_pixels: int | Literal["all"] = (
        4096  # class-balanced pixel budget per batch, or "all": every labeled pixel
    )
    partner: Literal["image", "copy"] = (
        "image"  # the partner of image 2k (variant cross pairs 2k, 2k+1): another image, or a distorted copy of it (contrast, joint)
    )
    copy_jitter: float = 0.4  # loss.partner copy: colour jitter strength of the copy's distortion
    joint_weight: float = 0.1  # lambda of the single-stage CE + lambda * contrast baseline
    class_weights: str | None = None  # None, or "balanced" (inverse-frequency CE weights)
    gather_negatives: bool = True  # under DDP, contrast against the pixels of every rank
    project_sampled: bool = False  # contrast objective: projection head on the sampled pixels only


@dataclass(frozen=True)
class SSLConfig:
    """Two-view self-supervised objectives (glcnet, dense_simclr, directclr)."""

    view_scale_min: float = 0.3  # each view is a random resized crop of scale (view_scale_min, 1) (GLCNet's code: 0.4, SimCLR: 0.08)
    min_overlap: float = (
        0.5  # the two crops share at least this fraction of the smaller one (local matching needs one)
    )
    glcnet_temperature: float = 0.5  # GLCNet's NT-Xent temperature (paper: 0.5)
    glcnet_global_weight: float = 0.5  # lambda: lambda * global + (1 - lambda) * local (paper: 0.5)
    glcnet_patches: int = 4  # local-matching patches per image (paper: 4)
    glcnet_patch_fraction: float = 48 / 224  # patch side / view side (paper: 48 px of 224)
    glcnet_hidden_dim: int = 256  # GLCNet MLP hidden width (GLCNet's code: 256)
    glcnet_out_dim: int = (
        128  # GLCNet MLP output width (GLCNet's code: the number of classes; here SimCLR's 128)
    )
    dense_temperature: float = 0.2  # dense SimCLR pixel InfoNCE temperature (DenseCL: 0.2; SimCLR: 0.1-0.5)
    directclr_temperature: float = (
        0.1  # DirectCLR InfoNCE temperature (SimCLR's ImageNet setting, as DirectCLR)
    )
    directclr_dim: int = (
        64  # d0: DirectCLR contrasts the first d0 decoder channels (paper: 360 of ResNet-50's 2048)
    )
    max_pairs: int = (
        1024  # corresponding pixel pairs per batch (dense SimCLR, DirectCLR; the loss sees 2x as many pixels)
    )


@dataclass(frozen=True)
class HCSCConfig:
    """``hcsc`` objective (Guo et al., CVPR 2022); see :mod:`pixcon.objectives.extra`."""

    temperature: float = 0.2  # both terms (paper: 0.2)
    num_prototypes: list[int] = field(default_factory=lambda: [64, 16, 4])  # per level, finest first
    bank_size: int = 8192  # pixel embeddings clustered (paper: the whole dataset)
    bank_per_step: int = 512  # embeddings pushed into the bank per step
    refresh_every: int = 100  # steps between re-clusterings (paper: one epoch)
    kmeans_iters: int = 20  # Lloyd iterations per level
    selection: Literal["sample", "expected", "hard", "none"] = "sample"  # negative selection (paper: sample)
    proto_selection: bool = True  # select negative prototypes by parent
    use_concentration: bool = True  # PCL per-prototype temperature
    proto_weight: float = 1.0  # weight of the prototype term
    max_pixels: int = 4096  # class-balanced pixel budget per step
    seed: int = 0  # k-means and bank-subsampling seed


@dataclass(frozen=True)
class CLAWSConfig:
    """``claws`` objective (Herrera-Gerena et al.); see :mod:`pixcon.objectives.extra`."""

    temperature: float = 0.1  # tau of the pixel contrast between the two views
    attention: Literal["labels", "feature_norm"] = "labels"  # source of the hard attention mask
    background_classes: list[int] = field(default_factory=list)  # masked out with attention=labels
    attend_fraction: float = 0.5  # share of pixels kept with attention=feature_norm
    jitter: float = 0.5  # colour-jitter strength of the two views
    max_pixels: int = 4096  # pixel budget over both views


@dataclass(frozen=True)
class ARIELConfig:
    """``ariel`` objective (Feng et al., WWW 2022); see :mod:`pixcon.objectives.extra`."""

    temperature: float = 0.4  # authors' code default
    epsilon: float = 8 / 255  # L-inf radius of the PGD view
    alpha: float = 2 / 255  # PGD step
    steps: int = 5  # PGD steps
    adv_weight: float = 1.0  # weight of the adversarial term
    info_weight: float = 1.0  # weight of the information regulariser
    jitter: float = 0.5  # colour-jitter strength of the two views
    max_pixels: int = 2048  # pixel positions per view


@dataclass(frozen=True)
class MultiDomainConfig:
    """Several datasets in one run (Boutillon et al., MICCAI 2021); see :mod:`pixcon.objectives.domains`.

    The ``data`` section is the primary domain. ``domains`` lists the others (none: a
    single-dataset run); with any, the run's objective trains on every domain, with per-domain
    batch norm and segmentation heads, plus the domain regulariser (``weight`` > 0). Each entry is
    a mapping of ``name`` plus ``data`` keys (``root`` is required). A domain that does not set a training
    procedure key (:data:`DOMAIN_INHERITED`: crop size, augmentation, batch sizes, workers) takes
    the primary's, resolved when the config is used (:func:`resolve_domains`), so a later change
    of ``data.batch_size`` changes theirs too. Every other key (format, root, classes file,
    splits, labeled split, ...) takes the ``data`` default. Checkpoints record every domain's
    resolved data section.
    """

    primary_name: str | None = None  # name of the data section's domain; None = data.root's folder name
    domains: list[dict[str, Any]] = field(default_factory=list)  # the other domains: {name, data keys}
    weight: float = (
        0.1  # lambda of sum_d L_d + lambda * regulariser; 0: none (pixcon's choice, as loss.joint_weight)
    )
    temperature: float = 0.1  # t of the regulariser (pixcon's pixel-loss default)
    form: Literal["supcon", "zhao"] = "supcon"  # supcon: Khosla et al.'s L_out, as the paper
    level: Literal["image", "pixel"] = "image"  # image: bottleneck embeddings (the paper); pixel: pixcon
    positives: Literal["domain", "domain_class"] = "domain"  # domain_class: pixel level only
    max_pixels: int = 4096  # pixel level: budget split equally between the domains
    image_proj_dim: int = 128  # image level: output of the shared image projection MLP
    shared_affine: bool = False  # True: per-domain BN statistics, one shared affine (ablation)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"  # the optimizer
    lr: float = 0.01  # peak learning rate
    weight_decay: float = 1e-4  # on weights, not on norms and biases
    momentum: float = 0.9  # sgd: Nesterov momentum (0 disables it)
    schedule: Literal["poly", "cosine", "constant"] = "poly"  # learning-rate decay over train.steps
    poly_power: float = 0.9  # poly: lr * (1 - progress) ** poly_power
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 500  # optimizer steps of the run
    eval_every: int = 100  # evaluate every k steps, and at the end
    checkpoint_every: int | None = None  # write last.pt every k steps; None = with each evaluation
    keep_best: bool = (
        False  # also write best.pt whenever the validation mIoU improves (ties keep the earlier)
    )
    log_every: int = 10  # training scalars to metrics.csv and TensorBoard every k steps
    seed: int = 0  # seeds initialisation, data order, augmentation and pixel sampling
    out_dir: str = "runs/run"  # the run folder: checkpoints, config.yaml, metrics.csv, run.json
    overwrite: bool = False  # a fresh run may replace another run's files in out_dir (--overwrite)
    init_from: str | None = None  # checkpoint to start from (finetune: the pretrain checkpoint)
    head_init: Literal["random", "prototypes"] = (
        "random"  # with init_from: the segmentation head from class means of the labeled pixels' features
    )
    prototype_space: Literal["auto", "embedding", "features"] = (
        "auto"  # head_init=prototypes: embedding (needs model.proj_layers=1), features, or auto
    )
    objective: ObjectiveName = "ce"  # what the run minimises (pixcon.objectives); set by the command
    accelerator: str = "auto"  # Lightning Fabric: cpu, cuda, mps, auto
    devices: int = 1  # Lightning Fabric: processes (GPUs) per node
    num_nodes: int = 1  # Lightning Fabric: machines
    strategy: str = "auto"  # Lightning Fabric: auto, ddp, ...
    precision: Literal["32-true", "32", "bf16-mixed", "16-mixed"] = "32-true"  # Fabric precision
    skip_nonfinite: bool = False  # skip steps with a non-finite loss instead of stopping
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only where no such kernel exists)
    channels_last: bool = False  # NHWC memory format (faster convolutions on recent GPUs)
    compile: bool = False  # torch.compile the encoder and decoder (in place: checkpoints keep their keys)
    progress: bool = True  # a progress bar (--quiet turns it off)


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    hcsc: HCSCConfig = field(default_factory=HCSCConfig)
    claws: CLAWSConfig = field(default_factory=CLAWSConfig)
    ariel: ARIELConfig = field(default_factory=ARIELConfig)
    multidomain: MultiDomainConfig = field(default_factory=MultiDomainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# Crops and resizes must be multiples of this: smp encoders have depth 5 (stride 2 ** 5), and the
# DeepLab encoders' dilated output stride (8 or 16) divides it. Native-size evaluation pads instead.
MODEL_STRIDE = 32

# (key, test, allowed) for range checks that types cannot express.
_RANGES: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("data.patch_size", lambda v: v >= 16, ">= 16"),
    ("data.patch_stride", lambda v: v is None or v >= 1, "None or >= 1"),
    ("data.nifti_axis", lambda v: v in (0, 1, 2), "0, 1 or 2"),
    ("data.nifti_window_low", lambda v: 0 <= v < 100, "[0, 100)"),
    ("data.nifti_window_high", lambda v: 0 < v <= 100, "(0, 100]"),
    (
        "data.nifti_slice_size",
        lambda v: v is None or (len(v) == 2 and min(v) >= 1),
        "None or [H, W], each >= 1",
    ),
    ("data.nifti_min_gap", lambda v: v >= 1, ">= 1 (neighbouring slices are near copies)"),
    ("data.image_size", lambda v: v >= 16, ">= 16"),
    ("data.eval_size", lambda v: v is None or v >= 16, "None or >= 16"),
    ("data.scale_min", lambda v: 0 < v <= 1, "(0, 1]"),
    ("data.color_jitter", lambda v: 0 <= v <= 1, "[0, 1]"),
    ("data.batch_size", lambda v: v >= 1, ">= 1"),
    ("data.eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("data.num_workers", lambda v: v >= 0, ">= 0"),
    (
        "data.value_range",
        lambda v: v is None or (len(v) == 2 and all(math.isfinite(x) for x in v) and v[0] < v[1]),
        "None or [lo, hi] with finite lo < hi",
    ),
    ("model.in_channels", lambda v: v is None or v >= 1, "None or >= 1"),
    ("model.proj_dim", lambda v: v >= 1, ">= 1"),
    ("model.proj_layers", lambda v: 1 <= v <= 3, "[1, 3]"),
    ("loss.temperature", lambda v: v > 0, "> 0"),
    ("loss.max_pixels", lambda v: v == "all" or (isinstance(v, int) and v >= 2), ">= 2 or 'all'"),
    ("loss.joint_weight", lambda v: v >= 0, ">= 0"),
    ("loss.copy_jitter", lambda v: 0 <= v <= 1, "[0, 1]"),
    ("loss.class_weights", lambda v: v in (None, "balanced"), "None or 'balanced'"),
    ("ssl.view_scale_min", lambda v: 0 < v <= 1, "(0, 1]"),
    ("ssl.min_overlap", lambda v: 0 <= v < 1, "[0, 1)"),
    ("ssl.glcnet_temperature", lambda v: v > 0, "> 0"),
    ("ssl.glcnet_global_weight", lambda v: 0 <= v <= 1, "[0, 1]"),
    ("ssl.glcnet_patches", lambda v: v >= 1, ">= 1"),
    ("ssl.glcnet_patch_fraction", lambda v: 0 < v <= 1, "(0, 1]"),
    ("ssl.glcnet_hidden_dim", lambda v: v >= 1, ">= 1"),
    ("ssl.glcnet_out_dim", lambda v: v >= 1, ">= 1"),
    ("ssl.dense_temperature", lambda v: v > 0, "> 0"),
    ("ssl.directclr_temperature", lambda v: v > 0, "> 0"),
    ("ssl.directclr_dim", lambda v: v >= 1, ">= 1"),
    ("ssl.max_pairs", lambda v: v >= 2, ">= 2"),
    ("hcsc.temperature", lambda v: v > 0, "> 0"),
    (
        "hcsc.num_prototypes",
        lambda v: len(v) >= 1 and all(k >= 2 for k in v),
        "a non-empty list of ints >= 2",
    ),
    ("hcsc.bank_size", lambda v: v >= 2, ">= 2"),
    ("hcsc.bank_per_step", lambda v: v >= 1, ">= 1"),
    ("hcsc.refresh_every", lambda v: v >= 1, ">= 1"),
    ("hcsc.kmeans_iters", lambda v: v >= 1, ">= 1"),
    ("hcsc.max_pixels", lambda v: v >= 2, ">= 2"),
    ("claws.temperature", lambda v: v > 0, "> 0"),
    ("claws.attend_fraction", lambda v: 0 < v <= 1, "(0, 1]"),
    ("claws.jitter", lambda v: 0 <= v <= 1, "[0, 1]"),
    ("claws.max_pixels", lambda v: v >= 2, ">= 2"),
    ("ariel.temperature", lambda v: v > 0, "> 0"),
    ("ariel.epsilon", lambda v: v >= 0, ">= 0"),
    ("ariel.alpha", lambda v: v >= 0, ">= 0"),
    ("ariel.steps", lambda v: v >= 0, ">= 0"),
    ("ariel.adv_weight", lambda v: v >= 0, ">= 0"),
    ("ariel.info_weight", lambda v: v >= 0, ">= 0"),
    ("ariel.jitter", lambda v: 0 <= v <= 1, "[0, 1]"),
    ("ariel.max_pixels", lambda v: v >= 2, ">= 2"),
    ("multidomain.weight", lambda v: v >= 0, ">= 0"),
    ("multidomain.temperature", lambda v: v > 0, "> 0"),
    ("multidomain.max_pixels", lambda v: v >= 2, ">= 2"),
    ("multidomain.image_proj_dim", lambda v: v >= 1, ">= 1"),
    ("optim.lr", lambda v: v > 0, "> 0"),
    ("optim.weight_decay", lambda v: v >= 0, ">= 0"),
    ("optim.momentum", lambda v: 0 <= v < 1, "[0, 1)"),
    ("optim.poly_power", lambda v: v > 0, "> 0"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0"),
    ("train.steps", lambda v: v >= 1, ">= 1"),
    ("train.eval_every", lambda v: v >= 1, ">= 1"),
    ("train.checkpoint_every", lambda v: v is None or v >= 1, "None or >= 1"),
    ("train.log_every", lambda v: v >= 1, ">= 1"),
    ("train.devices", lambda v: v >= 1, ">= 1"),
    ("train.num_nodes", lambda v: v >= 1, ">= 1"),
]


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [arg for arg in args if arg is not type(None)]
        if len(others) == 1:  # X | None: X's own message says what is wrong (e.g. which item)
            try:
                return _coerce(key, value, others[0])
            except ConfigError as err:
                raise ConfigError(f"{err} (or null)") from None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: must be one of {list(choices)}, got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping with string keys, got {value!r}")
        return dict(value)  # the values are checked by the section that reads them
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads "1e-3" (no dot) as a string (YAML 1.1); take it as the number it is
            with contextlib.suppress(ValueError):
                number = float(value)
                if math.isfinite(number):
                    value = number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            # YAML's .inf and .nan are floats: no setting means anything at infinity or NaN
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported annotation {tp}")  # pragma: no cover - a bug in this file


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s}; valid keys under {prefix or 'the top level'}: {sorted(names)}"
        )
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(typing.cast(type, tp), value or {}, prefix=f"{key}.")
        elif isinstance(value, str) and (key, value) in _REMOVED:
            raise ConfigError(f"{key}: {value!r} was removed; {_REMOVED[key, value]}")
        else:
            kwargs[name] = _coerce(key, value, tp)
    return cls(**kwargs)


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def validate(cfg: RunConfig) -> RunConfig:
    """Range checks; raises :class:`ConfigError` naming the key and the allowed range.

    Returns ``cfg``.
    """
    for key, ok, allowed in _RANGES:
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"{key}: {value!r} is out of range; allowed: {allowed}")
    _check_sizes(cfg.data, "data.")
    _check_head_init(cfg.train, cfg.model)
    return _check_domains(cfg)


# Values that earlier versions took, with what replaces them.
_REMOVED: dict[tuple[str, Any], str] = {
    ("train.objective", "multidomain"): (
        "several datasets are no longer an objective: list them in multidomain.domains (or "
        "`--datasets A,B` on the command line) and train any objective on all of them, e.g. "
        "train.objective: ce for the per-domain cross-entropy of Boutillon et al. (the domain "
        "regulariser is added with multidomain.weight)"
    ),
}


def _check_head_init(t: TrainConfig, m: ModelConfig) -> None:
    if t.head_init == "random":
        return
    if not t.init_from:
        raise ConfigError(
            "train.head_init: 'prototypes' takes class means of a pretrained network's features; "
            "set train.init_from (the pretraining checkpoint)"
        )
    if t.prototype_space == "embedding" and m.proj_layers != 1:
        raise ConfigError(
            f"train.prototype_space: 'embedding' needs model.proj_layers: 1 (a linear projection head), "
            f"got {m.proj_layers}; use 'features' or 'auto'"
        )


def _check_sizes(data: DataConfig, prefix: str) -> None:
    for name in ("image_size", "eval_size"):
        value = getattr(data, name)
        if value is not None and value % MODEL_STRIDE:
            lower = max(MODEL_STRIDE, value - value % MODEL_STRIDE)
            raise ConfigError(
                f"{prefix}{name}: {value} is not divisible by {MODEL_STRIDE}, the output stride the model "
                f"needs (2 ** encoder depth); use {lower} or {lower + MODEL_STRIDE}"
            )


# ---------------------------------------------------------------------------- multi-domain

# Data keys a domain takes from the primary's data section unless it sets them: how images are
# cropped, augmented and batched. Every other key describes the dataset itself.
DOMAIN_INHERITED: tuple[str, ...] = (
    "image_size",
    "eval_size",
    "scale_min",
    "color_jitter",
    "hflip",
    "batch_size",
    "eval_batch_size",
    "num_workers",
)
_DOMAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Domain:
    """One dataset of a multi-domain run: its name, the key its settings come from, its data section."""

    name: str
    key: str  # "data" for the primary, "multidomain.domains[i]" for the others (for error messages)
    data: DataConfig


def default_domain_name(root: str | Path) -> str:
    """A domain name from a dataset folder: its last path component, other characters as ``_``."""
    path = Path(str(root))
    base = path.name or path.resolve().name  # "." or "..": the folder's own name
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("_.-") or "domain"


def _check_domain_name(name: Any, key: str) -> str:
    if not isinstance(name, str) or not _DOMAIN_NAME.fullmatch(name):
        raise ConfigError(
            f"{key}: domain name {name!r} must start with a letter or digit and use only letters, digits, "
            "'_', '.' and '-'"
        )
    return name


def _domain_data(primary: DataConfig, entry: Mapping[str, Any], key: str) -> DataConfig:
    values = {k: v for k, v in entry.items() if k != "name"}
    if not values.get("root"):
        raise ConfigError(f"{key}.root: every extra domain needs its dataset folder (root)")
    for name in DOMAIN_INHERITED:
        values.setdefault(name, getattr(primary, name))
    data = _build(DataConfig, values, prefix=f"{key}.")
    probe = RunConfig(data=data)
    for range_key, ok, allowed in _RANGES:
        if range_key.startswith("data.") and not ok(_get(probe, range_key)):
            raise ConfigError(
                f"{key}.{range_key[5:]}: {_get(probe, range_key)!r} is out of range; allowed: {allowed}"
            )
    _check_sizes(data, f"{key}.")
    return data


def _check_domains(cfg: RunConfig) -> RunConfig:
    md = cfg.multidomain
    if md.positives == "domain_class" and md.level != "pixel":
        raise ConfigError(
            "multidomain.positives: 'domain_class' needs pixel embeddings (multidomain.level: pixel); "
            "image embeddings are contrasted by domain only"
        )
    if md.primary_name is not None:
        _check_domain_name(md.primary_name, "multidomain.primary_name")
    resolve_domains(cfg)  # every entry, for its errors
    return cfg


def resolve_domains(cfg: RunConfig) -> list[Domain]:
    """The domains of a run, the primary (the ``data`` section) first; ``[primary]`` without
    ``multidomain.domains``.

    Raises:
        ConfigError: A domain entry has an unknown key, a bad value, no root, or a name that is
            invalid or already taken (the message names the entry).
    """
    md = cfg.multidomain
    primary = Domain(md.primary_name or default_domain_name(cfg.data.root), "data", cfg.data)
    out = [primary]
    where = {primary.name: "multidomain.primary_name (data.root)"}
    for i, entry in enumerate(md.domains):
        key = f"multidomain.domains[{i}]"
        data = _domain_data(cfg.data, entry, key)
        name = entry.get("name")
        name = default_domain_name(data.root) if name is None else _check_domain_name(name, f"{key}.name")
        if name in where:
            raise ConfigError(
                f"{key}: domain name {name!r} is already used by {where[name]}; give every domain its own "
                f"name ({key}.name, multidomain.primary_name, or NAME=PATH in --datasets)"
            )
        where[name] = key
        out.append(Domain(name, key, data))
    return out


def with_domains(
    cfg: RunConfig, extra_roots: Sequence[str | Path], names: Sequence[str] | None = None, **data: Any
) -> RunConfig:
    """``cfg`` (the primary domain in its ``data`` section) with the datasets ``extra_roots`` as
    further domains: a run of several domains with ``cfg``'s objective.

    Args:
        cfg: The run's config; its ``multidomain`` section gives lambda, temperature, ...
        extra_roots: One dataset folder per extra domain (folder format; for other formats or
            keys use ``multidomain.domains`` entries).
        names: Their names; default each folder's name.
        **data: ``data`` keys set for every extra domain, e.g. ``labeled_split=None``.

    Raises:
        ConfigError: No folder, a name count that differs, or from :func:`validate` (duplicate
            names, bad keys, ...).
    """
    roots = [str(r) for r in extra_roots]
    if not roots:
        raise ConfigError("with_domains: give at least one extra dataset folder")
    if names is not None and len(names) != len(roots):
        raise ConfigError(f"with_domains: {len(roots)} folders but {len(names)} names")
    entries = [
        {"name": names[i] if names is not None else default_domain_name(root), "root": root, **data}
        for i, root in enumerate(roots)
    ]
    values = to_dict(cfg)
    values["multidomain"] = {**values["multidomain"], "domains": entries}
    return from_dict(values)


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=0.1"`` -> ``("optim.lr", 0.1)``; the value is parsed as YAML (numbers, bools, null, lists)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value, e.g. optim.lr=0.01")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(overrides: Sequence[tuple[str, Any]], base: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides:
        node = base
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return base


def load_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Defaults in code <- ``defaults`` <- YAML file <- ``key=value`` overrides, then validation.

    Args:
        path: Optional YAML file with the nested sections of :class:`RunConfig`.
        overrides: ``"section.key=value"`` strings, applied last.
        defaults: Command-specific values applied before the file (e.g. the objective).
    """
    values: dict[str, Any] = {}
    if defaults:
        values = _nest(list(_flatten(defaults)), values)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: invalid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        values = _nest(list(_flatten(loaded)), values)
    values = _nest([parse_override(o) for o in overrides], values)
    return validate(_build(RunConfig, values))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain nested dict (JSON/YAML safe)."""
    return dataclasses.asdict(cfg)


def from_dict(values: Mapping[str, Any]) -> RunConfig:
    """Inverse of :func:`to_dict`, with the same checks as :func:`load_config`."""
    return validate(_build(RunConfig, values))


def replace(cfg: RunConfig, **sections: Mapping[str, Any]) -> RunConfig:
    """Copy with some fields changed, e.g. ``replace(cfg, train={"steps": 10})``; validated."""
    values = to_dict(cfg)
    for name, changes in sections.items():
        if name not in values:
            raise ConfigError(f"unknown section {name!r}; valid: {sorted(values)}")
        values[name] = {**values[name], **changes}
    return from_dict(values)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
