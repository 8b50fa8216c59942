"""The detectors: importing this package registers every one of them in ``MODELS``.

The contract a detector declares when it registers (``register_detector``,
``LossRole``) is ``detectors.models.contract``; the names are re-exported here.
Read ``MODELS`` from this package, not from the contract module: only this
import guarantees every detector module has run its ``register_detector``.
"""
from detectors.models.contract import INJECTED, MODELS, LossRole, register_detector

from detectors.models import retinanet  # noqa: F401  (registers "retinanet")
from detectors.models import dense  # noqa: F401  (registers "dense" and presets "gfl", "atss", "fcos")
from detectors.models import yolo  # noqa: F401  (registers "yolov1")
from detectors.models import ssd  # noqa: F401  (registers "ssd")
from detectors.models import rcnn, fast_rcnn, faster_rcnn  # noqa: F401  (two-stage: "rcnn", "fast_rcnn", "faster_rcnn")

__all__ = ["INJECTED", "MODELS", "LossRole", "register_detector"]
