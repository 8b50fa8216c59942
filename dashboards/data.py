"""One study's results, read once from the store's read API into pandas frames.

    sd = load_study(store, "focal_gamma_sweep")
    sd.final            # one row per finished trial: trial_key, variant, seed, AP, AP50, ..., speed/*
    sd.variants         # variant names in sweep order (by the swept values, numbers numerically)
    sd.swept            # dotted config keys that differ between variants, e.g. ["loss.params.gamma", ...]
    sd.data("per_class_ap")   # {trial_key: object} for one trial-data key, fetched lazily

Nothing here writes, and nothing but the store object is touched: the pages
can be rebuilt from the store at any time.

A trial key can have several finished rows: a change to the detectors code (or
anything else in the config hash) makes a re-run a new trial under the same key.
The newest finished row (the store's order) is the one the pages use, as
``trial_data`` does; older ones are marked ``superseded`` and only listed.
"""
from __future__ import annotations

import json

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import pandas as pd

# Trial-dict keys that are bookkeeping, never a swept setting.
BOOKKEEPING = {"study", "trial_key", "variant", "seed", "config_hash", "trial_dir", "num_threads", "gpus"}


def flatten(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """Nested dicts -> {"a.b.c": value}; lists are kept whole (as tuples, so they compare and hash).

    The one flattening of a trial config: swept keys here, MLflow params in
    ``platform.track.tracking`` (a tuple is JSON-dumped as the list it was).
    """
    out: Dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = tuple(obj) if isinstance(obj, list) else obj
    return out


def dotted_get(config: Dict[str, Any], key: str, default: Any = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def short_key(key: str) -> str:
    """"loss.params.gamma" -> "gamma" (the last part, as variant names use it)."""
    return key.rsplit(".", 1)[-1]


def _sort_value(v: Any):
    if isinstance(v, bool) or v is None:
        return (1, str(v))
    if isinstance(v, (int, float)):
        return (0, float(v))
    return (1, str(v))


@dataclass
class StudyData:
    name: str
    info: Dict[str, Any]                   # the store's studies() entry (spec, mlflow ids, times)
    trials: List[Dict[str, Any]]           # every trial, any status
    final: pd.DataFrame                    # finished trials x final metrics
    epochs: pd.DataFrame                   # long: trial_key, variant, seed, step, name, value
    variants: List[str]                    # finished variants, sweep order
    swept: List[str]                       # dotted keys that differ between variants
    variant_params: Dict[str, Dict[str, Any]]   # variant -> {dotted key: value} for the swept keys
    _store: Any = field(repr=False, default=None)
    _cache: Dict[str, Dict[str, Any]] = field(repr=False, default_factory=dict)

    def data(self, key: str) -> Dict[str, Any]:
        """``{trial_key: object}`` of one trial-data key for finished trials (cached)."""
        if key not in self._cache:
            self._cache[key] = self._store.trial_data(self.name, key) if self._store is not None else {}
        return self._cache[key]

    def data_of(self, key: str, trial_keys: List[str]) -> Dict[str, Any]:
        """:meth:`data` of some trials only (those that have the key), read without the others'."""
        if key in self._cache:
            return {k: v for k, v in self._cache[key].items() if k in trial_keys}
        some = self._cache.setdefault(f"{key} (some)", {})
        missing = [k for k in trial_keys if k not in some]
        if missing and self._store is not None:
            some.update(self._store.trial_data(self.name, key, trial_keys=missing))
        return {k: some[k] for k in trial_keys if k in some}

    def speed_figures(self, digests) -> Dict[str, Dict[str, Any]]:
        """The isolated speed figures (``key``, ``figures``, ``hardware``, ``method``, ``measured_at``)
        with these digests (trial data ``speed_key``); empty for a store without them."""
        if self._store is None or not hasattr(self._store, "speed_figures"):
            return {}
        return self._store.speed_figures(set(digests))

    def ground_truth(self, digest: str) -> Optional[Dict[str, Any]]:
        """The stored val ground truth (COCO-format dict) a trial's ``data("val_ground_truth")`` names."""
        return self._store.ground_truth(digest) if self._store is not None else None

    @property
    def finished(self) -> List[Dict[str, Any]]:
        """Finished trials whose results the pages use (superseded re-runs left out)."""
        return [t for t in self.trials if t["status"] == "finished" and not t.get("superseded")]

    @property
    def failed(self) -> List[Dict[str, Any]]:
        return [t for t in self.trials if t["status"] == "failed"]

    @property
    def spec(self) -> Dict[str, Any]:
        return self.info.get("spec") or {}

    def config(self) -> Dict[str, Any]:
        """A representative trial config (the first finished, else the first trial)."""
        pool = self.finished or self.trials
        return pool[0]["config"] if pool else {}

    def metric(self, name: str) -> pd.DataFrame:
        """Rows trial_key, variant, seed, value for one final metric (NaN rows dropped)."""
        if self.final.empty or name not in self.final:
            return pd.DataFrame(columns=["trial_key", "variant", "seed", "value"])
        df = self.final[["trial_key", "variant", "seed", name]].rename(columns={name: "value"})
        return df.dropna(subset=["value"])

    def primary_param(self) -> Optional[str]:
        """The swept key to put on an x axis: the first numeric one, else the first one."""
        for key in self.swept:
            values = [p.get(key) for p in self.variant_params.values()]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return key
        return self.swept[0] if self.swept else None

    def seeds(self, variant: str) -> List[int]:
        return sorted(self.final.loc[self.final["variant"] == variant, "seed"].tolist()) if not self.final.empty else []


def _swept_keys(trials: List[Dict[str, Any]]) -> List[str]:
    """Config keys that are constant within each variant but differ between variants."""
    per_variant: Dict[str, Dict[str, Any]] = {}
    varies_within = set()
    for t in trials:
        flat = {k: v for k, v in flatten(t["config"]).items() if k.split(".")[0] not in BOOKKEEPING}
        seen = per_variant.setdefault(t["variant"], flat)
        varies_within |= {k for k in set(seen) | set(flat) if seen.get(k) != flat.get(k)}
    keys: List[str] = []
    if len(per_variant) > 1:
        all_keys = sorted({k for flat in per_variant.values() for k in flat})
        first = next(iter(per_variant.values()))
        for k in all_keys:
            if k in varies_within:
                continue
            if any(flat.get(k) != first.get(k) for flat in per_variant.values()):
                keys.append(k)
    # keep the order in which keys appear in the variant names (the sweep's own order)
    name = trials[0]["variant"] if trials else ""
    return sorted(keys, key=lambda k: (name.find(short_key(k) + "=") % 10_000 if short_key(k) + "=" in name
                                       else 10_000, k))


def _with_epoch(epochs: pd.DataFrame) -> pd.DataFrame:
    """Adds "epoch" (1-based, from the reported ``epoch`` metric at the same step; else the step)."""
    ep = epochs[epochs["name"] == "epoch"][["trial_key", "step", "value"]].rename(columns={"value": "epoch"})
    out = epochs.merge(ep.drop_duplicates(["trial_key", "step"]), on=["trial_key", "step"], how="left")
    out["epoch"] = (out["epoch"] + 1).fillna(out["step"])
    return out


def load_study(store, study_name: str, info: Optional[Dict[str, Any]] = None) -> StudyData:
    """Everything the pages need from the store except the per-trial data blobs (lazy). ``info``: the study's
    ``studies()`` entry, for a study that ``studies()`` leaves out (a study's tuning samples, ``dashboards.tuning``)."""
    info = info or next((s for s in store.studies() if s["name"] == study_name), None)
    if info is None:
        raise KeyError(study_name)
    trials = store.trials(study_name)
    newest = {t["trial_key"]: t["config_hash"] for t in trials if t["status"] == "finished"}  # id order: last wins
    for t in trials:
        t["superseded"] = t["status"] == "finished" and newest[t["trial_key"]] != t["config_hash"]
    finals = store.final_metrics(study_name)
    if finals:
        # rows come in trial-id order: for a re-run trial key, the newest row of each metric is kept
        finals_df = pd.DataFrame(finals).drop_duplicates(["trial_key", "name"], keep="last")
        final = finals_df.pivot(index=["trial_key", "variant", "seed"], columns="name",
                                           values="value").reset_index()
        final.columns.name = None
    else:
        final = pd.DataFrame(columns=["trial_key", "variant", "seed"])
    epochs = _with_epoch(pd.DataFrame(store.epoch_metrics(study_name),
                                      columns=["trial_key", "variant", "seed", "step", "name", "value"])
                         .drop_duplicates(["trial_key", "step", "name"], keep="last"))
    known = [t for t in trials if t["status"] in ("finished", "failed", "running") and not t["superseded"]]
    swept = _swept_keys(known)
    variant_params: Dict[str, Dict[str, Any]] = {}
    for t in known:
        variant_params.setdefault(t["variant"], {k: dotted_get(t["config"], k) for k in swept})
    finished_variants = list(dict.fromkeys(final["variant"].tolist())) if not final.empty else []
    order = sorted(finished_variants, key=lambda v: tuple(_sort_value(variant_params.get(v, {}).get(k))
                                                          for k in swept) + (v,))
    sd = StudyData(study_name, info, trials, final, epochs, order, swept, variant_params, store)
    # order the final frame by variant then seed, the order every table uses
    if not final.empty:
        rank = {v: i for i, v in enumerate(order)}
        sd.final = final.assign(_r=final["variant"].map(rank)).sort_values(["_r", "seed"]).drop(columns="_r")
        sd.final = sd.final.reset_index(drop=True)
    return sd


def fmt_value(v: Any) -> str:
    """A swept value as it reads in a label: 0.25, 2, focal."""
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return str(int(v))
    return str(v)


def synthetic_text(syn: Dict[str, Any]) -> str:
    """A generated set in words: "800 train / 150 val images, 128 px, 5 classes (generator seed 0)"."""
    return (f"{syn.get('num_train', '?')} train / {syn.get('num_val', '?')} val images, "
            f"{syn.get('image_size', '?')} px, {syn.get('num_classes', '?')} classes "
            f"(generator seed {syn.get('seed', '?')})")


def dataset_identity(config: Dict[str, Any]) -> str:
    """A trial's dataset identity: ``dataset.digest`` (the sha256 the driver writes), or for a config from
    before digests its kind, annotation files and generator settings. Trials with equal identities trained
    and were scored on the same data."""
    ds = config.get("dataset") or {}
    if ds.get("digest"):
        return str(ds["digest"])
    return json.dumps({k: ds.get(k) for k in ("kind", "train_annotations", "val_annotations", "synthetic")},
                      sort_keys=True, default=str)
