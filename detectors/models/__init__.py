"""Detector registry. ``MODELS.build(name, num_classes=K, scale=..., cls_loss=fn, **params)``."""
from detectors.registry import Registry

MODELS = Registry("detector")

from detectors.models import retinanet  # noqa: E402,F401  (registers "retinanet")
from detectors.models import dense  # noqa: E402,F401  (registers "dense" and presets "gfl", "atss", "fcos")
