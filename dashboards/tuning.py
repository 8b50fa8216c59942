"""The tuning page of a study (``reports/<study>/tuning.html``): what each variant's equal search budget
(``sweep.tune``) tried, what it chose, and how much the choice depended on the number of samples.

The search's trials are stored as their own study, ``<study>`` + ``Store.TUNING_SUFFIX`` (".tune"), one trial per
sampled configuration (variant as in the study, trial key ``<variant>/sample=<i>``, trial data ``"tuning"``:
``{"sample", "values", "score", "epochs", "stopped_early"}``); each final trial of the study names the
configuration it came from (trial data ``"tuned"``: ``{"values", "sample", "score"}``). A study without tuning
trials has no tuning page and no link to one.

The expected best score after n samples is Dodge et al., EMNLP 2019, "Show your work: improved reporting of
experimental results" (sec. 3): the N scores of a variant's search, sorted, are the empirical distribution one
more sample would be drawn from, so the maximum of n independent draws from it has the expectation
``expected_max`` computes, for every n from 1 to N.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from dashboards import figures
from dashboards.context import PageContext
from dashboards.data import StudyData, load_study, short_key
from dashboards.html import Figures, esc, kv, num, table

TUNING_SUFFIX = ".tune"  # platform.track.store.Store.TUNING_SUFFIX; read from the store when it has one
EDGE = 0.05              # a chosen value this close to an end of its range (share of the range) is at its edge
SEARCHES = {"optuna": "Optuna's TPE sampler", "random": "random search"}


# ------------------------------------------------------------------ statistics of a search

def expected_max(scores: Sequence[float], n: int) -> Tuple[float, float]:
    """Expected maximum of ``n`` draws with replacement from ``scores`` (N values), and its standard deviation.

    With v_(1) <= ... <= v_(N) sorted, P(max of n draws = v_(i)) = (i/N)^n - ((i-1)/N)^n, so
    E[max] = sum_i v_(i) * w_i and E[max^2] = sum_i v_(i)^2 * w_i with the same weights; sd = sqrt(E[max^2] - E[max]^2).
    Ties need no care: tied values' weights add up to the probability of their common value.
    """
    v = np.sort(np.asarray(scores, dtype=float))
    big_n = v.size
    if big_n == 0 or n < 1:
        return math.nan, math.nan
    i = np.arange(1, big_n + 1)
    w = (i / big_n) ** n - ((i - 1) / big_n) ** n
    mean = float(w @ v)
    return mean, math.sqrt(max(float(w @ v ** 2) - mean ** 2, 0.0))  # max(): rounding can make 0 slightly negative


def expected_max_curve(scores: Sequence[float]) -> Tuple[List[float], List[float]]:
    """``expected_max`` for n = 1..N (N = len(scores)): the lists of means and standard deviations."""
    pairs = [expected_max(scores, n) for n in range(1, len(scores) + 1)]
    return [m for m, _ in pairs], [s for _, s in pairs]


def ranking(curves: Mapping[str, Sequence[float]], n: int) -> List[str]:
    """Variants by their value at n (1-based), best first; ties keep the given order."""
    order = list(curves)
    return sorted(order, key=lambda v: (-curves[v][n - 1], order.index(v)))


def stable_from(curves: Mapping[str, Sequence[float]]) -> Optional[int]:
    """The smallest n from which the ranking of the variants by ``curves`` (variant -> values at n = 1, 2, ...) is
    the same at every n up to the last one all curves have (N); N itself when the ranking at N - 1 differs.
    None without two variants to rank."""
    if len(curves) < 2:
        return None
    big_n = min(len(c) for c in curves.values())
    if big_n == 0:
        return None
    final = ranking(curves, big_n)
    n = big_n
    while n > 1 and ranking(curves, n - 1) == final:
        n -= 1
    return n


def range_position(value: float, low: float, high: float, log: bool) -> float:
    """Where ``value`` lies in [low, high], 0 at low and 1 at high; measured on log values for a log-scale key
    (the scale the search sampled on)."""
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low) if high != low else 0.5


def at_edge(value: float, low: float, high: float, log: bool, tol: float = EDGE) -> Optional[str]:
    """"low" or "high" when ``value`` is within ``tol`` of the range at that end (``range_position``), else None."""
    pos = range_position(value, low, high, log)
    return "low" if pos <= tol else "high" if pos >= 1 - tol else None


# ------------------------------------------------------------------ data

def tuning_name(store, study_name: str) -> str:
    return study_name + getattr(store, "TUNING_SUFFIX", TUNING_SUFFIX)


def load_tuning(store, study_name: str) -> Optional[StudyData]:
    """The study's tuning trials (``load_study`` of ``<study>.tune``), or None when it has no finished one.
    The store's ``studies()`` leaves tuning studies out, so their trials are looked up by name."""
    name = tuning_name(store, study_name)
    if not any(t["status"] == "finished" for t in store.trials(name)):
        return None
    info = next((s for s in store.studies() if s["name"] == name), None) or {"name": name, "spec": {}}
    return load_study(store, name, info=info)


def tune_spec(sd: StudyData) -> Dict[str, Any]:
    """The study file's ``sweep.tune`` ({} when the stored spec has none)."""
    return (sd.spec.get("sweep") or {}).get("tune") or {}


def current_search(sd: StudyData, tsd: StudyData) -> Dict[str, Any]:
    """Variant -> the search (the records' ``"search"`` key) whose samples the page shows: the one the variant's
    final trials took their values from (trial data "tuned"), else the one its newest sample belongs to. A search
    whose settings changed is a new search; the store keeps the old one's samples under the same study."""
    data, tuned = tsd.data("tuning"), sd.data("tuned")
    out: Dict[str, Any] = {}
    for t in tsd.finished:  # trial order: the newest last
        out[t["variant"]] = (data.get(t["trial_key"]) or {}).get("search")
    for t in sd.finished:
        choice = tuned.get(t["trial_key"])
        record = data.get(f"{t['variant']}/sample={choice['sample']}") if choice else None
        if record is not None:
            out[t["variant"]] = record.get("search")
    return out


def samples_frame(tsd: StudyData, keys: Sequence[str], search: Optional[Mapping[str, Any]] = None) -> pd.DataFrame:
    """One row per finished tuning trial of each variant's ``search`` (all when None): variant, sample, score,
    epochs, stopped_early and one column per key."""
    data = tsd.data("tuning")
    rows = []
    for t in tsd.finished:
        d = data.get(t["trial_key"])
        if d is None or (search is not None and d.get("search") != search.get(t["variant"])):
            continue
        score = d.get("score")  # None: a sample that never reported a score (left out of the statistics)
        rows.append({"variant": t["variant"], "sample": int(d["sample"]),
                     "score": math.nan if score is None else float(score),
                     "epochs": d.get("epochs"), "stopped_early": bool(d.get("stopped_early")),
                     **{k: (d.get("values") or {}).get(k) for k in keys}})
    columns = ["variant", "sample", "score", "epochs", "stopped_early", *keys]
    return pd.DataFrame(rows, columns=columns).sort_values(["variant", "sample"]).reset_index(drop=True)


def chosen(sd: StudyData, samples: pd.DataFrame, variant: str) -> Tuple[Optional[dict], bool]:
    """The configuration a variant's final trials trained with (their trial data "tuned"), and whether it came from
    them; before any final trial finished, the variant's best sample (``False``)."""
    tuned = sd.data("tuned")
    for t in sd.finished:
        if t["variant"] == variant and t["trial_key"] in tuned:
            return tuned[t["trial_key"]], True
    mine = samples[samples["variant"] == variant]
    if mine.empty:
        return None, False
    best = mine.loc[mine["score"].idxmax()]
    keys = [c for c in samples.columns if c not in ("variant", "sample", "score", "epochs", "stopped_early")]
    return {"values": {k: best[k] for k in keys}, "sample": int(best["sample"]), "score": float(best["score"])}, False


# ------------------------------------------------------------------ the page

def fmt(v: Any) -> str:
    """A searched value: integers as they are, other numbers to 3 significant digits."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    if isinstance(v, (float, np.floating)) and math.isfinite(v):
        return str(int(v)) if v == int(v) and abs(v) >= 1 else f"{v:.3g}"
    return "–" if v is None else str(v)


def _searched_section(ctx: PageContext, tune: Dict[str, Any], space: Dict[str, dict]) -> str:
    seeds = sorted({t["seed"] for t in ctx.sd.finished})
    keys = "".join(f"<li><code>{esc(k)}</code>: {esc(fmt(r.get('low')))} to {esc(fmt(r.get('high')))}, "
                   f"{'log' if r.get('log') else 'linear'} scale</li>" for k, r in space.items()) or "<li>–</li>"
    scheduler = tune.get("scheduler")
    sched = (f"ASHA early stopping (a sample trains at least {tune.get('grace_epochs', '?')} epoch(s); at each rung "
             f"the best 1/{tune.get('reduction_factor', '?')} go on)" if scheduler == "asha"
             else "none: every sample trains the full budget" if scheduler == "none" else "–")
    holdout = tune.get("holdout")
    split = (f"{100 * holdout:.0f}% of the train images, held out from training (split seed {tune.get('seed', '?')})"
             if isinstance(holdout, (int, float)) else "–")
    rows = [("searched", f"<ul style='margin:0'>{keys}</ul>"),
            ("samples per variant", esc(tune.get("samples", "–"))),
            ("search", esc(SEARCHES.get(tune.get("search"), tune.get("search") or "–"))),
            ("scheduler", esc(sched)),
            ("score", "val AP on the tuning split, at the last epoch a sample was evaluated"),
            ("tuning split", esc(split))]
    return ("<h2>What was searched</h2>" + kv(rows)
            + "<p>Every variant got the same budget: the same number of samples from the same space, with the same "
              "search and scheduler. Each sample was scored on the tuning split, carved from the train set; the val "
              "set the other pages score was never used to tune. Each variant's chosen configuration then trained "
              f"over the study's seeds ({esc(', '.join(map(str, seeds)) or '–')}) like any trial.</p>")


def _variants_section(ctx: PageContext, tsd: StudyData, samples: pd.DataFrame, variants: List[str],
                      space: Dict[str, dict], budget: Optional[int]) -> str:
    rows, notes = [], []
    for v in variants:
        mine = samples[samples["variant"] == v]
        failed = sum(1 for t in tsd.failed if t["variant"] == v)
        pick, final = chosen(ctx.sd, samples, v)
        values = (pick or {}).get("values") or {}
        done = f"{len(mine)}" + (f" of {budget}" if budget else "") + (f" ({failed} failed)" if failed else "")
        row = {"variant": esc(v), "samples done": esc(done),
               "epochs spent": num(int(mine["epochs"].fillna(0).sum())),
               "stopped early": num(int(mine["stopped_early"].sum()))}
        for k in space:
            row[f"chosen {short_key(k)}"] = esc(fmt(values.get(k)))
        row["tuning score"] = num((pick or {}).get("score"))
        row["sample"] = esc(fmt((pick or {}).get("sample"))) + ("" if final or pick is None
                                                                else ' <span class="note">(best; no final trial yet)'
                                                                     '</span>')
        rows.append(row)
        for k, r in space.items():
            value = values.get(k)
            if value is None or r.get("low") is None or r.get("high") is None:
                continue
            end = at_edge(float(value), float(r["low"]), float(r["high"]), bool(r.get("log")))
            if end:
                notes.append(f"<li>{esc(v)}: the best {esc(short_key(k))} is at the range's edge: the search may "
                             f"have cut it off ({esc(fmt(value))}, at the {end} end of {esc(fmt(r['low']))} to "
                             f"{esc(fmt(r['high']))}).</li>")
    edge = (f"<p class=warn>A chosen value within {EDGE:.0%} of an end of its range"
            f"{' (on the log scale for log keys)' if any(r.get('log') for r in space.values()) else ''}:</p>"
            f"<ul>{''.join(notes)}</ul>") if notes else ""
    return ("<h2>Per variant</h2>" + table(pd.DataFrame(rows), left=["samples done"])
            + "<p class=note>Epochs spent: the sum over the variant's samples; tuning score: val AP on the tuning "
              "split of the chosen sample; sample: its index in the order the search created them (from 0).</p>"
            + edge)


def _figures_section(samples: pd.DataFrame, variants: List[str], space: Dict[str, dict], figs: Figures) -> str:
    out = ["<h2>What each sample scored</h2>"]
    if space:
        out.append("<p class=note>One point per sample; hollow: stopped early by ASHA, at the score it had "
                   "then. Each x axis spans the key's search range.</p>")
        ranges = {k: (r["low"], r["high"]) for k, r in space.items() if r.get("low") is not None
                  and r.get("high") is not None}
        out.append(figs.div(figures.tuning_scores(samples, list(space), [k for k, r in space.items() if r.get("log")],
                                                  variants, ranges), height=420))
    best = {}
    for v in variants:
        mine = samples[samples["variant"] == v].sort_values("sample")
        best[v] = (mine["sample"].tolist(), mine["score"].cummax().tolist())
    out.append("<p class=note>The tuning curve: the best score among the samples created so far.</p>")
    out.append(figs.div(figures.tuning_curve(best, variants), height=380))
    return "".join(out)


def _expected_section(samples: pd.DataFrame, variants: List[str], figs: Figures) -> str:
    curves, bands, rows = {}, {}, []
    for v in variants:
        scores = samples.loc[samples["variant"] == v, "score"].dropna().tolist()
        if not scores:
            continue
        mean, sd = expected_max_curve(scores)
        curves[v] = mean
        # the band is clipped to the scores seen: the maximum of draws from them can leave neither end
        bands[v] = ([max(m - s, min(scores)) for m, s in zip(mean, sd)],
                    [min(m + s, max(scores)) for m, s in zip(mean, sd)])
        rows.append({"variant": esc(v), "N": len(scores),
                     "n = 1 (the mean)": f"{num(mean[0])} <span class=note>± {num(sd[0])}</span>",
                     "n = N": f"{num(mean[-1])} <span class=note>± {num(sd[-1])}</span>",
                     "best seen": num(max(scores))})
    text = ("<h2>Expected best tuning AP against the number of samples</h2><p class=note>Dodge et al., EMNLP 2019 "
            "(\"Show your work\", sec. 3): a variant's N sample scores, sorted v<sub>(1)</sub> &le; ... &le; "
            "v<sub>(N)</sub>, stand for the distribution of one more sample's score, so the best of n samples is "
            "expected at E[max] = &Sigma;<sub>i</sub> v<sub>(i)</sub> ((i/N)<sup>n</sup> - ((i-1)/N)<sup>n</sup>), for "
            "n = 1 (the mean score) to N; the band is &plusmn;1 standard deviation (from E[max&sup2;] with the same "
            "weights), clipped to the scores seen. Early-stopped samples count with the score they had when stopped "
            "(a lower bound on what they would have reached), as ASHA saw them.</p>")
    stable = _stability_text(curves)
    return (text + table(pd.DataFrame(rows)) + stable
            + figs.div(figures.expected_max(curves, bands, variants), height=420))


def _stability_text(curves: Dict[str, List[float]]) -> str:
    n = stable_from(curves)
    if n is None:
        return ""
    big_n = min(len(c) for c in curves.values())
    order = " &gt; ".join(esc(v) for v in ranking(curves, big_n))
    if n == 1:
        return (f"<p>The ranking of the variants by expected best tuning AP is the same for every n from 1 to "
                f"N = {big_n}: {order}.</p>")
    if n == big_n:
        return (f"<p class=warn>The ranking of the variants by expected best tuning AP changes at the last n "
                f"(n = {big_n}, to {order}): more samples might change it again.</p>")
    return (f"<p>From n = {n} on, the ranking of the variants by expected best tuning AP stays the same up to "
            f"N = {big_n}: {order}.</p>")


def build_tuning(ctx: PageContext, tsd: StudyData) -> str:
    """The tuning page from the study's tuning trials ``tsd`` (``load_tuning``)."""
    figs = Figures("tuning")
    tune = tune_spec(ctx.sd)
    space = dict(tune.get("space") or {})
    found = tsd.data("tuning")
    for d in found.values():  # keys the stored spec does not name (an older spec): shown without a range
        for k in d.get("values") or {}:
            space.setdefault(k, {})
    samples = samples_frame(tsd, list(space), current_search(ctx.sd, tsd))
    variants = [v for v in ctx.sd.variants if v in set(samples["variant"])]
    variants += [v for v in dict.fromkeys(samples["variant"]) if v not in variants]
    body = (_searched_section(ctx, tune, space)
            + _variants_section(ctx, tsd, samples, variants, space, tune.get("samples"))
            + _figures_section(samples, variants, space, figs)
            + _expected_section(samples, variants, figs))
    return ctx.write("tuning.html", "Tuning", body, figs)
