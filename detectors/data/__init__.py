"""Datasets: the generated synthetic set and a loader for any COCO-format set on disk.

Boxes leave this package as float ``[N, 4]`` xyxy absolute pixels and labels as
contiguous ``0..K-1``; the datasets keep the mapping to original category ids.
"""
from detectors.data.coco import CocoDetection, DatasetError, collate
from detectors.data.synthetic import DEFAULTS as SYNTHETIC_DEFAULTS
from detectors.data.synthetic import generate as generate_synthetic

__all__ = ["CocoDetection", "DatasetError", "collate", "SYNTHETIC_DEFAULTS", "generate_synthetic"]
