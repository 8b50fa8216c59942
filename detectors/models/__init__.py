"""Detector registry. ``MODELS.build(name, num_classes=K, scale=..., **params)``."""
from detectors.registry import Registry

MODELS = Registry("detector")
