"""The pretraining stage, driven: pretrain each backbone the study's trials ask for, once, before they start.

    run_pretraining(store, "two_stage_evolution", trials, tracker)

A trial whose ``detector.backbone.weights`` is ``pretrain`` starts from the tiny
body the platform pretrains itself (``detectors.train.pretrain``, the stand-in
for ImageNet). Trials asking for the same settings share one run, and so do
studies: the weights are cached by the settings' digest beside the generated
datasets. A cache hit prints one line; a miss runs the stage as one Ray task
holding every CPU of a node, with a progress line per epoch (held-out accuracy,
time left), an MLflow run under the study's run, and a store row
(``pretrained_backbones``) that the pages read.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, List, Tuple

from detectors.config import PRETRAIN, PretrainConfig, parse
from detectors.train.pretrain import pretrain_digest, pretrained_path, read_meta

__all__ = ["pretraining_needed", "run_pretraining"]


def pretraining_needed(trials: List[dict]) -> Dict[str, Tuple[PretrainConfig, str]]:
    """digest -> (settings, cache root) of every pretraining the trials ask for."""
    out = {}
    for t in trials:
        backbone = t["detector"]["backbone"]
        if backbone["weights"] == PRETRAIN:
            settings = parse(PretrainConfig, backbone["pretrain"])
            out.setdefault(pretrain_digest(settings), (settings, t["dataset"]["cache_dir"]))
    return out


def run_pretraining(store, study_name: str, trials: List[dict], tracker=None, say: Callable[[str], None] = print
                    ) -> Dict[str, str]:
    """Pretrain what is not cached yet (Ray must be up); returns digest -> weights file."""
    out = {}
    for digest, (settings, root) in pretraining_needed(trials).items():
        path = pretrained_path(settings, root)
        if os.path.isfile(path):
            result = read_meta(path)
            say(f"pretrained backbone {digest[:12]}: cached (held-out accuracy {result['val_accuracy']:.3f}, "
                f"trained in {result['seconds']:.0f}s)")
        else:
            result = _pretrain(settings, root, say)
            _log_run(tracker, digest, settings, result)
        store.record_pretraining(digest, result["settings"], path, result, study_name)
        out[digest] = path
    return out


def _pretrain(settings: PretrainConfig, root: str, say: Callable[[str], None]) -> dict:
    """One Ray task on a whole node; its epochs come back through a queue as progress lines."""
    import ray
    from ray.util.queue import Empty, Queue

    from detectors.train.pretrain import pretrain_task

    cpus = max((n["Resources"].get("CPU", 1.0) for n in ray.nodes() if n.get("Alive")), default=1.0)
    say(f"pretraining the tiny backbone: {settings.images} generated images, {settings.epochs} epochs "
        f"(cached for every study that asks for these settings)")
    queue = Queue(actor_options={"num_cpus": 0})
    ref = ray.remote(pretrain_task).options(num_cpus=cpus, max_retries=0).remote(
        {k: getattr(settings, k) for k in settings.__dataclass_fields__}, root, int(cpus), queue)
    t0 = time.monotonic()
    while True:
        done, _ = ray.wait([ref], timeout=1.0)
        try:
            while True:
                f = queue.get_nowait()
                left = f["train_seconds"] / f["epoch"] * (f["epochs"] - f["epoch"])
                say(f"pretraining: epoch {f['epoch']}/{f['epochs']}, loss {f['loss']:.3f}, held-out accuracy "
                    f"{f['val_accuracy']:.3f}, {f['seconds']:.0f}s, about {left:.0f}s left")
        except Empty:
            pass
        if done:
            break
    result = ray.get(ref)["result"]
    say(f"pretraining: done in {time.monotonic() - t0:.0f}s, held-out accuracy {result['val_accuracy']:.3f}")
    return result


def _log_run(tracker, digest: str, settings: PretrainConfig, result: dict) -> None:
    """The stage's MLflow run under the study's run: its settings, each epoch's figures, the result."""
    if tracker is None:
        return
    params = {f"pretrain.{k}": v for k, v in result["settings"].items()}
    run_id = tracker.start_run(f"pretrain {digest[:12]}", {"detbench.kind": "pretraining",
                                                          "detbench.pretrain_digest": digest}, params)
    for f in result["history"]:
        tracker.log_metrics(run_id, {"loss": f["loss"], "val_accuracy": f["val_accuracy"]}, f["epoch"])
    tracker.log_dict(run_id, result, "pretraining.json")
    tracker.end_child(run_id, "FINISHED", duration_s=result["seconds"])
