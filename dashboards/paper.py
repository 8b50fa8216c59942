"""Paper numbers beside ours: which paper table a study replays, and whether its ordering holds.

The numbers live in ``dashboards/paper/*.yaml``, one file per paper, each table
with its source (e.g. "Table 1b"), the metric, the config keys that identify a
row and a ``match`` filter. A study is compared with a table when at least two
of its variants match rows; matching goes by the trials' configs, never by the
study's name.

For each matched variant other than the paper's best (the reference), the
paper's gap to the reference is set beside ours, both absolute and relative to
the reference, with our gap's 95% CI (a row whose value is null, not in the paper,
shows our gap alone and stays *undecided*). A row is *reproduced* only with both
kinds of evidence (``dashboards.stats.decide``): the paired t test over at least
3 matching seeds (retraining noise) and, for accuracy metrics, the bootstrap
over val images (evaluation noise) both put our gap on the paper's side of 0;
for a gap the paper calls "close" (or a tie), both equivalence tests (TOST) put
it within the margin (1 AP). A row where a test could not tell (too few seeds,
no bootstrap) is *undecided*, not "not reproduced".
"""
from __future__ import annotations

import glob
import math
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import yaml
from scipy import stats as _st

from dashboards.data import StudyData, dotted_get

PAPER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper")
# Our AP-family metrics are fractions; papers print percent.
PERCENT_METRICS = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}

# variant a minus variant b on a metric (Analysis.difference): a dict with diff, lo, hi, method
# and the joint verdict of both tests (sign, equivalent, why), or None
DiffFn = Callable[[str, str, str], Optional[Dict[str, Any]]]


def load_tables(paper_dir: str = PAPER_DIR) -> List[Dict[str, Any]]:
    """Every table of every paper file, each with its paper's name, citation and setting."""
    tables = []
    for path in sorted(glob.glob(os.path.join(paper_dir, "*.yaml"))):
        with open(path) as f:
            doc = yaml.safe_load(f)
        for t in doc.get("tables", []):
            match = t.get("match") or [{}]
            tables.append(dict(t, match=match if isinstance(match, list) else [match], paper=doc["paper"],
                               citation=doc.get("citation", ""), setting=doc.get("setting", ""),
                               file=os.path.basename(path)))
    return tables


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def _satisfies(config: Dict[str, Any], match: List[Dict[str, Any]]) -> bool:
    return any(all(_same(dotted_get(config, k), v) for k, v in alt.items()) for alt in match)


def match_variants(sd: StudyData, table: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """variant -> the table row it replays (only finished variants whose every trial matches)."""
    out: Dict[str, Dict[str, Any]] = {}
    for variant in sd.variants:
        configs = [t["config"] for t in sd.finished if t["variant"] == variant]
        if not configs or not all(_satisfies(c, table["match"]) for c in configs):
            continue
        for row in table["rows"]:
            if all(all(_same(dotted_get(c, k), row.get(k)) for c in configs) for k in table["keys"]):
                out[variant] = row
                break
    # A row replayed by two variants is ambiguous (they differ in something the table
    # does not pin): leave those variants out rather than compare the wrong one.
    rows = [id(r) for r in out.values()]
    return {v: r for v, r in out.items() if rows.count(id(r)) == 1}


def _factor(metric: str) -> float:
    """Our value -> the paper's unit: AP-like metrics are printed in percent."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def compare(sd: StudyData, table: Dict[str, Any], matched: Dict[str, Dict[str, Any]],
            diff: DiffFn) -> Dict[str, Any]:
    """The comparison rows and the ordering verdict for one matched table."""
    metric, higher = table["metric"], table.get("higher_is_better", True)
    close = table.get("relation") == "close"
    factor = _factor(metric)
    ours = {v: sd.metric(metric).query("variant == @v")["value"].mean() * factor for v in matched}
    paper = {v: row.get("value") for v, row in matched.items()}
    numbered = [v for v in matched if paper[v] is not None]
    if close or not numbered:
        ref = next(iter(matched))
    else:
        ref = (max if higher else min)(numbered, key=lambda v: paper[v])
    rows = []
    for v in matched:
        p_gap = None if close or paper[v] is None or paper[ref] is None else paper[v] - paper[ref]
        d = diff(v, ref, metric) if v != ref else None
        our_gap, lo, hi, method = (d["diff"] * factor, d["lo"] * factor, d["hi"] * factor, d["method"]) if d else (
            math.nan, math.nan, math.nan, "")
        mark, why = _mark(p_gap, d, close) if v != ref else ("reference", "the paper's best")
        rows.append({"variant": v, "paper": paper[v], "ours": ours[v], "paper_gap": p_gap,
                     "paper_rel": None if p_gap is None else p_gap / paper[ref],
                     "our_gap": our_gap, "our_rel": our_gap / ours[ref] if ours[ref] else math.nan,
                     "lo": lo, "hi": hi, "method": method, "mark": mark, "why": why})
    return {"table": table, "reference": ref, "rows": rows, "factor": factor,
            "ordering": _ordering(numbered, paper, ours, higher)}


def _mark(p_gap: Optional[float], d: Optional[Dict[str, Any]], close: bool) -> Tuple[str, str]:
    """reproduced / not reproduced / undecided, and why (each test's word)."""
    if d is None:
        return "undecided", "no results to compare"
    sign, equivalent, why = d["sign"], d["equivalent"], d["why"]
    if close or p_gap == 0:
        if equivalent:
            return "reproduced", f"the paper reports them close; equivalent on both tests ({why})"
        if equivalent is None and not sign:  # a test could not tell (or no margin), and no difference shown
            return "undecided", f"the paper reports them close; can't tell ({why})"
        return "not reproduced", f"the paper reports them close; not shown equivalent ({why})"
    if p_gap is None:  # a row the paper has no number for (value: null): our gap, nothing to hold it to
        return "undecided", f"not available: the paper gives no number for this variant ({why})"
    if sign is None:
        return "undecided", f"can't tell ({why})"
    if sign == 0:
        return "not reproduced", f"{'the tests disagree' if d['split'] else 'not significant'} ({why})"
    if (sign > 0) == (p_gap > 0):
        return "reproduced", f"same direction on both tests ({why})"
    return "not reproduced", f"opposite direction on both tests ({why})"


def _ordering(variants: List[str], paper: Dict[str, Any], ours: Dict[str, float], higher: bool) -> Dict[str, Any]:
    """Paper's and our ranking of the numbered variants, Kendall's tau, and whether order and best hold."""
    if len(variants) < 2:
        return {}
    sign = -1 if higher else 1
    paper_order = sorted(variants, key=lambda v: sign * paper[v])
    our_order = sorted(variants, key=lambda v: sign * ours[v])
    tau = _st.kendalltau([paper[v] for v in variants], [ours[v] for v in variants]).statistic
    return {"paper": paper_order, "ours": our_order, "tau": float(tau) if tau == tau else math.nan,
            "held": paper_order == our_order, "best_held": paper_order[0] == our_order[0]}


def comparisons(sd: StudyData, diff: DiffFn, tables: Optional[List[Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """Every paper table this study replays (>= 2 matched variants), compared."""
    out = []
    for table in load_tables() if tables is None else tables:
        matched = match_variants(sd, table)
        if len(matched) >= 2:
            out.append(compare(sd, table, matched, diff))
    return out
