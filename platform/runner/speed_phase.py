"""The driver's side of the isolated speed phase (``detectors.evaluation.speed_phase`` measures).

After a study's trials finish, its finished trials are grouped by speed key;
each group without a stored figure (or, under ``--force``, any group with a
trial that just ran) is measured once, by a Ray task that asks for every CPU of
a node (and a GPU when the key's device is CUDA), so nothing else of this Ray
runs on that node meanwhile. Each figure goes into the results store with its
hardware (``Store.record_speed``), and every trial of the group gets it: its
``speed_key`` data, its final ``speed/*`` metrics and its MLflow run's metrics.
A group whose figure exists only links trials that lack it, without Ray.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Set

from detectors.config import TrialConfig
from detectors.evaluation.speed_phase import key_digest, key_label, speed_key, uses_speed_phase
from platform.track.store import SPEED_KEY

# How long the phase waits for a node to be free and measured (a measurement itself takes seconds
# to a minute): past it the figure is left for the next run rather than the study hanging.
WAIT_S = float(os.environ.get("DETBENCH_SPEED_WAIT_S", 900))

# Figures of the phase that become each trial's final metrics, with every per-stage time
# (``stage_<name>_ms``, the two-stage family's). The trial's own training img/s (measured
# while it ran beside others) stays ``speed/train_img_s``.
TRIAL_METRICS = {"latency_ms_p50": "speed/latency_ms_p50", "latency_ms_p95": "speed/latency_ms_p95",
                 "throughput_img_s": "speed/throughput_img_s", "train_img_s": "speed/train_img_s_alone",
                 "peak_gpu_mb": "speed/peak_gpu_mb"}


def trial_metrics(figures: Dict[str, float]) -> Dict[str, float]:
    out = {name: figures[k] for k, name in TRIAL_METRICS.items() if k in figures}
    out.update({f"speed/{k}": v for k, v in figures.items() if k.startswith("stage_") and k.endswith("_ms")})
    return out


def speed_groups(store, study_name: str, trials: List[dict], code_version: str,
                 ran: Iterable[str] = (), force: bool = False) -> List[Dict[str, Any]]:
    """The study's finished trials that use the phase, grouped by speed key.

    Each group: ``digest``, ``key``, ``trials`` (trial dicts, in study order), ``measure``
    (no stored figure, or ``force`` and a trial of the group in ``ran``, the hashes that
    just ran) and ``link`` (the trials whose stored ``speed_key`` is not this digest).
    """
    finished = store.finished_hashes(study_name)
    ran = set(ran)
    groups: Dict[str, Dict[str, Any]] = {}
    for t in trials:
        if t["config_hash"] not in finished:
            continue
        cfg = TrialConfig.from_dict(t)  # parsed once, not per question: 1-3 ms a trial, seconds for a thousand
        if not uses_speed_phase(cfg):
            continue
        key = speed_key(cfg, code_version)
        g = groups.setdefault(key_digest(key), {"key": key, "trials": []})
        g["trials"].append(t)
    if not groups:
        return []
    stored = store.speed_figures(set(groups))
    linked = store.trial_data(study_name, SPEED_KEY)
    have: Dict[str, Set[str]] = {}  # final metric names per trial: a link that lacks a figure is made again
    for row in store.final_metrics(study_name) if stored else ():
        have.setdefault(row["trial_key"], set()).add(row["name"])
    out = []
    for digest, g in groups.items():
        measure = digest not in stored or (force and any(t["config_hash"] in ran for t in g["trials"]))
        wanted = set() if measure else set(trial_metrics(stored[digest]["figures"]))
        link = g["trials"] if measure else [t for t in g["trials"] if linked.get(t["trial_key"]) != digest
                                            or not wanted <= have.get(t["trial_key"], set())]
        out.append({"digest": digest, "key": g["key"], "trials": g["trials"], "measure": measure, "link": link})
    return out


def _node_resources() -> Dict[str, float]:
    """CPUs and GPUs of the largest alive node: what a task must ask for to have a node alone."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return {"CPU": max((n.get("CPU", 0.0) for n in nodes), default=1.0),
            "GPU": max((n.get("GPU", 0.0) for n in nodes), default=0.0)}


def _measure(groups: List[Dict[str, Any]], say: Callable[[str], None]) -> Dict[str, Dict[str, Any]]:
    """Run one Ray task per group to measure; digest -> measurement (failures are said and skipped)."""
    import time

    import ray

    from detectors.evaluation.speed_phase import measure_alone

    node = _node_resources()
    remote = ray.remote(measure_alone)
    pending = {}
    for g in groups:
        trial = g["trials"][0]  # the first finished trial of the group in study order
        weights = os.path.join(trial["trial_dir"], "final", "model.pt")
        gpus = 1 if g["key"]["device"] == "cuda" and node["GPU"] >= 1 else 0
        ref = remote.options(num_cpus=node["CPU"], num_gpus=gpus, max_retries=0).remote(trial, weights)
        pending[ref] = (g, trial)
    say(f"speed: measuring {len(groups)} configuration{'s' if len(groups) != 1 else ''} alone on a node "
        f"(a task holding all {node['CPU']:g} CPUs of one), shared by "
        f"{sum(len(g['trials']) for g in groups)} trials")
    out = {}
    deadline = time.monotonic() + WAIT_S
    for ref, (g, trial) in pending.items():
        try:
            m = ray.get(ref, timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            say(f"speed: {key_label(g['key'])}: no node was free for it within {WAIT_S:.0f}s (something else "
                "holds its CPUs); not measured, the next run of the study measures it")
            continue
        except Exception as exc:  # noqa: BLE001 - a speed figure must not fail a finished study
            say(f"speed: {key_label(g['key'])}: measurement failed ({type(exc).__name__}: "
                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}); no speed figure stored")
            continue
        out[g["digest"]] = {**m, "key": g["key"], "trial_hash": trial["config_hash"]}
        f, hw = m["figures"], m["hardware"]
        say(f"speed: {key_label(g['key'])}: latency p50 {f['latency_ms_p50']:.1f} ms "
            f"(p95 {f['latency_ms_p95']:.1f}), throughput {f['throughput_img_s']:.1f} img/s, "
            f"training {f['train_img_s']:.1f} img/s; on {hw['cpu']} ({hw['cpu_cores']} cores"
            f"{', ' + hw['gpu'] if hw.get('gpu') else ''}), {m['method']['seconds']:.0f}s")
    return out


def pending(groups: List[Dict[str, Any]]) -> bool:
    """Whether the phase has anything to do (a figure to measure or a trial to link)."""
    return any(g["measure"] or g["link"] for g in groups)


def run_speed_phase(store, study_name: str, groups: List[Dict[str, Any]], *, tracker=None,
                    start_ray: Optional[Callable[[], bool]] = None, say: Callable[[str], None] = print) -> int:
    """Measure what needs measuring, link what needs linking (``groups`` from :func:`speed_groups`);
    returns the number of figures measured.

    Ray must be up when a group needs measuring, unless ``start_ray`` is given (called at most
    once; it returns False when Ray could not start, and then nothing is measured). ``tracker``
    (``platform.track.tracking.StudyTracker`` or None) gets each linked trial's metrics in its MLflow run.
    """
    to_measure = [g for g in groups if g["measure"]]
    measured: Dict[str, Dict[str, Any]] = {}
    if to_measure and (start_ray is None or start_ray()):
        measured = _measure(to_measure, say)
    stored = store.speed_figures({g["digest"] for g in groups if g["link"]})
    runs = {t["config_hash"]: t.get("mlflow_run_id") for t in store.trials(study_name)} if tracker else {}
    for g in groups:
        if not g["link"] or (g["digest"] not in measured and g["digest"] not in stored):
            continue
        m = measured.get(g["digest"])
        metrics = trial_metrics((m or stored[g["digest"]])["figures"])
        store.record_speed(study_name, g["digest"], m, [t["config_hash"] for t in g["link"]], metrics)
        for t in g["link"]:
            run_id = runs.get(t["config_hash"])
            if tracker is not None and run_id:
                tracker.log_metrics(run_id, metrics, 0)
    return len(measured)
