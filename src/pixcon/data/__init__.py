"""Datasets, joint transforms, label-fraction splits and the embedded synthetic dataset."""

from __future__ import annotations

from pixcon.data.fashion import FASHION_CLASSES, find_fashion_mnist, load_fashion_mnist
from pixcon.data.folder import SegmentationFolder, read_ids, write_ids
from pixcon.data.splits import format_percent, nested_label_splits, split_filename, write_label_splits
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

__all__ = [
    "CLASS_NAMES",
    "DATASET_NAME",
    "FASHION_CLASSES",
    "PALETTE",
    "STUFF_CLASSES",
    "JointTransform",
    "Placement",
    "SceneSources",
    "SegmentationFolder",
    "eval_transform",
    "find_fashion_mnist",
    "format_percent",
    "generate_dataset",
    "load_fashion_mnist",
    "load_scene_sources",
    "nested_label_splits",
    "read_ids",
    "render_image",
    "render_scene",
    "resolve_class_weights",
    "scene_rng",
    "split_filename",
    "train_transform",
    "write_ids",
    "write_label_splits",
]
