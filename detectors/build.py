"""From a trial's plain config to a model: the one place that reads the detectors' contracts.

    check_components(detector, loss, losses)      # the driver, before anything starts
    model = build_detector(trial, num_classes, class_counts)   # the worker

A detector declares its parameters, loss roles and loss names when it
registers (``detectors.models.register_detector``). A trial names its losses
in two ways: ``loss`` sets the detector's primary role (``cls`` for the
one-stage detectors) and ``losses`` maps any role to ``{name, params}``; a role
named in neither gets the role's default. Everything here raises
``detectors.registry.ConfigError`` with the config key path, which the driver
words as ``<file>: <key.path>: <message>``. ``component_keys`` gives the
driver's study key space (``platform.study.keys``) its share: the keys only the
declarations know.
"""
from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

from detectors.config import PRETRAIN, LossConfig, PhaseConfig, TrialConfig, parse
from detectors.losses import build_loss
from detectors.models import MODELS, LossRole
from detectors.models.pretrained import check_weights, find_bodies, load_backbone, read_weights
from detectors.registry import ConfigError, Entry, Param, ParamError, Registry, suggest


def entry_of(registry: Registry, name: Any, loc: Tuple) -> Entry:
    if not isinstance(name, str) or name not in registry:
        raise ConfigError(loc, f"unknown {registry.kind} {name!r}{suggest(name, registry.names())} "
                          f"(known: {', '.join(registry.names())})")
    return registry.entry(name)


def loss_roles(detector: str) -> Dict[str, LossRole]:
    """The loss roles a detector takes, by role name."""
    return MODELS.entry(detector).meta["roles"]


def primary_role(detector: str) -> str:
    return MODELS.entry(detector).meta["primary"]


def loss_names(detector: str) -> Tuple[str, ...]:
    """Every loss name (``loss_*``) the detector's forward can return in train mode."""
    return MODELS.entry(detector).meta["losses"]


def active_loss_names(detector: str, params: Mapping[str, Any]) -> Tuple[str, ...]:
    """The loss names its forward returns with ``params`` (defaults filled in)."""
    entry = MODELS.entry(detector)
    merged = {k: p.default for k, p in entry.params.items()}
    merged.update(params)
    active = entry.meta.get("active")
    return tuple(active(merged)) if active else entry.meta["losses"]


def weight_names(detector: str) -> Tuple[str, ...]:
    """Names ``train.loss_weights`` may use: the loss names without their ``loss_`` prefix."""
    return tuple(n.removeprefix("loss_") for n in loss_names(detector))


def default_loss_weights(detector: str) -> Dict[str, float]:
    """The weights the detector's paper gives its losses (by name without ``loss_``); the training
    loop starts from these and ``train.loss_weights`` overrides them. Empty for most detectors."""
    return dict(MODELS.entry(detector).meta.get("loss_weights") or {})


def _check_params(entry: Entry, what: str, params: Any, loc: Tuple) -> Dict[str, Any]:
    if not isinstance(params, Mapping):
        raise ConfigError(loc, f"expected a mapping (key: value), got {type(params).__name__}", expected="mapping")
    try:
        return entry.check_params(params)
    except KeyError as e:
        key = e.args[0]
        known = ", ".join(sorted(entry.params)) or "none"
        raise ConfigError(loc + (key,), f"unknown parameter of {what} '{entry.name}'{suggest(key, entry.params)} "
                          f"(known: {known})", unknown_key=True) from None
    except ParamError as e:
        key = getattr(e, "key", None)
        return_loc = loc + (key,) if key else loc
        raise ConfigError(return_loc, e.msg, expected=e.expected) from None


def resolve_losses(detector: str, loss: Optional[Mapping], losses: Mapping[str, Mapping]) -> Dict[str, dict]:
    """Role -> ``{"name", "params"}`` for every role the trial or the role's default names."""
    out = {}
    for role, spec in loss_roles(detector).items():
        given = loss if (role == primary_role(detector) and loss) else losses.get(role)
        if given:
            out[role] = {"name": given["name"], "params": dict(given.get("params") or {})}
        elif spec.default:
            out[role] = {"name": spec.default, "params": dict(spec.params)}
    return out


def component_keys(detector: str, loss: Optional[Mapping], losses: Mapping[str, Mapping]) -> Dict[str, Param]:
    """Dotted key -> what it takes, for every key a config's components let it set.

    ``detector.name`` (any registered detector) and ``detector.params.*`` (this
    one's); ``losses.<role>.name`` for every role and ``loss.name`` for the
    primary one (the role's registry); the params of the loss each role resolves
    to (``resolve_losses``) under ``losses.<role>.params.*``, and the primary
    role's under ``loss.params.*`` too. Component names are ``Literal`` choices.
    """
    entry = MODELS.entry(detector)
    roles, primary = entry.meta["roles"], entry.meta["primary"]
    keys = {"detector.name": Param("name", detector, Literal[tuple(MODELS.names())])}
    keys.update({f"detector.params.{k}": p for k, p in entry.params.items()})
    for role, spec in roles.items():
        name = Param("name", spec.default, Literal[tuple(spec.registry.names())])
        keys[f"losses.{role}.name"] = name
        if role == primary:
            keys["loss.name"] = name
    for role, given in resolve_losses(detector, loss, losses).items():
        for k, p in roles[role].registry.parameters(given["name"]).items():
            keys[f"losses.{role}.params.{k}"] = p
            if role == primary:
                keys[f"loss.params.{k}"] = p
    return keys


def _check_per_class(entry: Entry, params: Mapping[str, Any], num_classes: Optional[int], loc: Tuple) -> None:
    """A loss's per-class list params (its ``per_class`` meta) have one value per class of the dataset."""
    if num_classes is None:
        return
    for key in entry.meta.get("per_class", ()):
        value = params.get(key)
        if isinstance(value, list) and len(value) != num_classes:
            raise ConfigError(loc + (key,), f"one value per class: the dataset has {num_classes} classes, "
                              f"got {len(value)} values")


def check_components(detector: Mapping, loss: Optional[Mapping], losses: Mapping[str, Mapping],
                     num_classes: Optional[int] = None
                     ) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]], Dict[str, Dict[str, Any]]]:
    """Validate a config's detector and losses against the detector's declarations.

    ``num_classes``: the dataset's, where known before it is loaded (per-class
    loss params are checked against it). Returns the normalised detector params,
    primary loss params (or None) and ``losses`` (role -> normalised params);
    raises :class:`ConfigError`.
    """
    entry = entry_of(MODELS, detector["name"], ("detector", "name"))
    det_params = _check_params(entry, "detector", detector.get("params") or {}, ("detector", "params"))
    roles, primary = entry.meta["roles"], entry.meta["primary"]
    checked: Dict[str, Dict[str, Any]] = {}
    loss_params = None
    if loss is not None:
        role = roles[primary]
        loss_entry = entry_of(role.registry, loss["name"], ("loss", "name"))
        loss_params = _check_params(loss_entry, role.registry.kind, loss.get("params") or {}, ("loss", "params"))
        _check_per_class(loss_entry, loss_params, num_classes, ("loss", "params"))
    for role_name, spec in losses.items():
        if role_name not in roles:
            raise ConfigError(("losses", role_name), f"detector '{entry.name}' takes no '{role_name}' loss"
                              f"{suggest(role_name, roles)} (its loss roles: {', '.join(roles)})",
                              unknown_key=True)
        if role_name == primary and loss is not None:
            raise ConfigError(("losses", role_name), f"the '{primary}' loss is already set by the 'loss' "
                              "section; set it in one place")
        role = roles[role_name]
        role_entry = entry_of(role.registry, spec.get("name"), ("losses", role_name, "name"))
        checked[role_name] = _check_params(role_entry, role.registry.kind, spec.get("params") or {},
                                           ("losses", role_name, "params"))
        _check_per_class(role_entry, checked[role_name], num_classes, ("losses", role_name, "params"))
    check = entry.meta.get("check_losses")
    if check is not None:
        merged = {k: p.default for k, p in entry.params.items()}
        merged.update(det_params)
        names = {r: s["name"] for r, s in resolve_losses(entry.name, loss, losses).items()}
        try:
            check(merged, names)
        except ValueError as e:
            raise ConfigError(("loss", "name") if loss is not None else ("losses",), str(e)) from None
    return det_params, loss_params, checked


def check_loss_weights(detector: str, weights: Mapping[str, Any]) -> None:
    """Every key of ``train.loss_weights`` names a loss the detector returns."""
    names = weight_names(detector)
    for key in weights:
        if key not in names:
            raise ConfigError(("train", "loss_weights", key),
                              f"detector '{detector}' returns no loss '{key}'{suggest(key, names)} "
                              f"(its losses: {', '.join(names)})", unknown_key=True)


def build_detector(trial: Union[Mapping[str, Any], TrialConfig], num_classes: int, class_counts) -> Any:
    """The trial's model: the detector's builder called with its params, the
    injected settings and one bound loss per role. The model never sees the config."""
    cfg = TrialConfig.from_dict(trial)
    det, ev = cfg.detector, cfg.eval
    context = {"class_counts": list(class_counts), "num_classes": num_classes}
    kwargs = {}
    roles = loss_roles(det.name)
    for role, spec in resolve_losses(det.name, _plain(cfg.loss), {r: _plain(s) for r, s in cfg.losses.items()}).items():
        kwargs[f"{role}_loss"] = build_loss(roles[role].registry, spec["name"], spec["params"], context)
    injected = dict(num_classes=num_classes, scale=det.scale, score_thresh=ev.score_thresh, max_dets=ev.max_dets)
    if ev.nms_iou is not None:  # else the builder's own, its paper's (two-stage 0.3, RetinaNet 0.5, ...)
        injected["nms_iou"] = ev.nms_iou
    model = MODELS.build(det.name, **injected, **kwargs, **det.params)
    if det.backbone.weights is not None:
        load_backbone(model, read_weights(backbone_weights_path(cfg)), det.backbone.freeze_at, det.backbone.norm)
    return model


def backbone_weights_path(cfg: TrialConfig) -> str:
    """The trial's backbone weights file: its own, or the pretraining stage's (run here if the driver
    did not run it first, as for a trial run by hand)."""
    backbone = cfg.detector.backbone
    if backbone.weights != PRETRAIN:
        return backbone.weights
    from detectors.data.resolve import default_cache_root
    from detectors.train.pretrain import ensure_pretrained

    return ensure_pretrained(backbone.pretrain, cfg.dataset.cache_dir or default_cache_root())


def _plain(loss: Optional[LossConfig]) -> Optional[dict]:
    return None if loss is None else {"name": loss.name, "params": dict(loss.params)}


def trial_phases(trial: Union[Mapping[str, Any], TrialConfig]) -> List[PhaseConfig]:
    """The trial's phases: ``train.phases``, else the detector's declared scheme, else one phase."""
    from detectors.train.phases import resolve_phases

    cfg = TrialConfig.from_dict(trial)
    entry = MODELS.entry(cfg.detector.name)
    declare = entry.meta.get("phases")
    declared = None
    if declare is not None and not cfg.train.phases:
        params = {k: p.default for k, p in entry.params.items()}
        params.update(cfg.detector.params)
        declared = declare(params, cfg.train)
    return resolve_phases(cfg.train, declared)


def check_phase_parts(detector: Mapping[str, Any], phases: list, num_classes: int = 2) -> None:
    """Every ``trainable`` / ``frozen`` prefix of every phase names parameters of the detector.

    The model is built on the ``meta`` device (shapes, no memory, no weights), so this
    costs a fraction of a second even at paper scale.
    """
    import torch

    from detectors.train.phases import apply_phase

    with torch.device("meta"):
        model = MODELS.build(detector["name"], num_classes=num_classes, scale=detector.get("scale", "tiny"),
                             score_thresh=0.05, max_dets=100, **(detector.get("params") or {}))
    for i, phase in enumerate(parse(PhaseConfig, p) for p in phases):
        if phase.kind == "fit" and not hasattr(model, "fit_phase"):
            raise ConfigError(("train", "phases", i, "kind"), f"detector '{detector['name']}' fits no phase "
                              "itself (kind 'fit' needs its fit_phase); use kind: sgd")
        for key in ("trainable", "frozen"):
            for j, prefix in enumerate(getattr(phase, key) or ()):
                try:
                    apply_phase(model, PhaseConfig(name=phase.name, epochs=1, **{key: (prefix,)}))
                except ValueError as e:
                    raise ConfigError(("train", "phases", i, key, j), str(e).split(": ", 1)[-1]) from None


def check_backbone(detector: Mapping[str, Any], num_classes: int = 2) -> None:
    """The backbone weights a detector section names fit the detector: a readable state dict of a
    known architecture, every key and shape as that network's, and a body of it in the detector.
    Raises :class:`ConfigError` at ``detector.backbone.weights`` with one line naming the file."""
    backbone = detector.get("backbone") or {}
    weights, loc = backbone.get("weights"), ("detector", "backbone", "weights")
    if weights is None:
        return
    if weights == PRETRAIN:
        arch = "tiny"
        if detector.get("scale", "tiny") != "tiny":
            raise ConfigError(loc, "the pretraining stage pretrains the tiny body; at paper scale name a weights "
                                   "file (torchvision's ResNet-50 state dict)")
    else:
        arch = _checked_file(weights, *_stamp(weights))
    params = json.dumps(detector.get("params") or {}, sort_keys=True)
    if not _has_body(detector["name"], detector.get("scale", "tiny"), params, arch, num_classes):
        where = "the pretraining stage's" if weights == PRETRAIN else f"{weights}:"
        raise ConfigError(loc, f"{where} {arch} weights fit no backbone of detector '{detector['name']}' at scale "
                               f"'{detector.get('scale', 'tiny')}'")


@functools.lru_cache(maxsize=256)
def _has_body(name: str, scale: str, params: str, arch: str, num_classes: int) -> bool:
    """Whether the detector has a body of ``arch`` (built on the meta device; remembered per
    configuration, since a sweep's check validates every trial's config again)."""
    import torch

    with torch.device("meta"):
        model = MODELS.build(name, num_classes=num_classes, scale=scale, score_thresh=0.05, max_dets=100,
                             **json.loads(params))
    return bool(find_bodies(model, arch))


def _stamp(path: str) -> Tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ConfigError(("detector", "backbone", "weights"), f"{path}: {e.strerror.lower()}") from None
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _checked_file(path: str, size: int, mtime_ns: int) -> str:
    """The file's architecture, read and checked once per content stamp (a sweep re-validates each trial)."""
    try:
        arch, _ = check_weights(read_weights(path))
    except Exception as e:  # torch's unpickling errors, or check_weights' ValueError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(("detector", "backbone", "weights"), f"{path}: {first}") from None
    return arch
