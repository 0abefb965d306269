"""Dataset readers (folder, VOC, Cityscapes, ISPRS), checks, joint transforms, label splits, synthetic data."""

from __future__ import annotations

from pixcon.data.base import SegmentationDataset, UnknownColorError
from pixcon.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, LABEL_TO_TRAIN_ID, Cityscapes
from pixcon.data.fashion import FASHION_CLASSES, find_fashion_mnist, load_fashion_mnist
from pixcon.data.folder import SegmentationFolder, read_ids, write_ids
from pixcon.data.images import image_to_tensor, read_rgb
from pixcon.data.isprs import ISPRS_CLASSES, ISPRS_PALETTE, ISPRSPatches
from pixcon.data.registry import (
    DatasetError,
    DatasetReport,
    check_dataset,
    measure_value_range,
    open_dataset,
    resolve_value_range,
    split_ids,
)
from pixcon.data.splits import (
    class_presence,
    format_percent,
    nested_label_splits,
    split_filename,
    write_label_splits,
)
from pixcon.data.synthetic import (
    CLASS_NAMES,
    DATASET_NAME,
    PALETTE,
    STUFF_CLASSES,
    Placement,
    SceneSources,
    generate_dataset,
    load_scene_sources,
    render_image,
    render_scene,
    resolve_class_weights,
    scene_rng,
)
from pixcon.data.transforms import JointTransform, eval_transform, train_transform
from pixcon.data.voc import VOC_CLASSES, VOC_PALETTE, VOCSegmentation

__all__ = [
    "CITYSCAPES_CLASSES",
    "CITYSCAPES_PALETTE",
    "CLASS_NAMES",
    "DATASET_NAME",
    "FASHION_CLASSES",
    "ISPRS_CLASSES",
    "ISPRS_PALETTE",
    "LABEL_TO_TRAIN_ID",
    "PALETTE",
    "STUFF_CLASSES",
    "VOC_CLASSES",
    "VOC_PALETTE",
    "Cityscapes",
    "DatasetError",
    "DatasetReport",
    "ISPRSPatches",
    "JointTransform",
    "Placement",
    "SceneSources",
    "SegmentationDataset",
    "SegmentationFolder",
    "UnknownColorError",
    "VOCSegmentation",
    "check_dataset",
    "class_presence",
    "eval_transform",
    "find_fashion_mnist",
    "format_percent",
    "generate_dataset",
    "image_to_tensor",
    "load_fashion_mnist",
    "load_scene_sources",
    "measure_value_range",
    "nested_label_splits",
    "open_dataset",
    "read_ids",
    "read_rgb",
    "render_image",
    "render_scene",
    "resolve_class_weights",
    "resolve_value_range",
    "scene_rng",
    "split_filename",
    "split_ids",
    "train_transform",
    "write_ids",
    "write_label_splits",
]
