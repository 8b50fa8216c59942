"""Statistics and paper matching behind the pages, on hand-checkable numbers."""
import math

import numpy as np
import pandas as pd
import pytest

from dashboards import stats
from dashboards.data import StudyData
from dashboards.figures import pareto_front
from dashboards.paper import compare, load_tables, match_variants

import fakes


def test_t_interval_by_hand():
    # values 1, 2, 3: mean 2, sd 1, t(0.975, df 2) = 4.302653 -> half = 4.302653 / sqrt(3) = 2.484138
    ci = stats.t_interval([1.0, 2.0, 3.0])
    assert ci["mean"] == pytest.approx(2.0)
    assert ci["half"] == pytest.approx(2.484138, abs=1e-6)
    assert (ci["lo"], ci["hi"]) == pytest.approx((2 - 2.484138, 2 + 2.484138), abs=1e-6)
    one = stats.t_interval([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["lo"]) and one["n"] == 1
    assert stats.t_interval([])["n"] == 0


def test_paired_difference_uses_matching_seeds_only():
    # seeds 0, 1, 2 in both; seed 3 only in a. d = 0.1, 0.3, 0.2: mean 0.2, sd 0.1,
    # t = 0.2 / (0.1 / sqrt 3) = 3.4641, two-sided p (df 2) = 0.07418
    a = {0: 0.5, 1: 0.7, 2: 0.6, 3: 9.0}
    b = {0: 0.4, 1: 0.4, 2: 0.4}
    d = stats.paired_difference(a, b)
    assert d["seeds"] == [0, 1, 2]
    assert d["mean"] == pytest.approx(0.2)
    assert d["p"] == pytest.approx(0.07418, abs=1e-4)
    assert stats.significant(d["lo"], d["hi"]) is False  # the interval spans 0
    assert stats.significant(math.nan, 1.0) is None


def test_bootstrap_equals_evaluating_a_resampled_ground_truth(tmp_path):
    """The fast path (per-image records re-ordered under fresh ids + COCOeval.accumulate) gives
    exactly the AP of COCOeval on a ground truth rebuilt from the resampled images."""
    import json

    gt_path = fakes.write_ground_truth(str(tmp_path / "gt.json"), num_images=12)
    gt = stats.load_gt(gt_path)
    dets = fakes.fake_detections(json.load(open(gt_path)), jitter=3.0, false_pos=3, seed=1)
    ids = sorted(gt.getImgIds())
    ev = stats._evaluated(gt, dets, ids)
    rng = np.random.default_rng(3)
    for _ in range(4):
        idx = rng.integers(0, len(ids), len(ids))  # with repeats
        assert stats._accumulate_on(ev, idx) == pytest.approx(stats.resampled_ap(gt, dets, [ids[i] for i in idx]),
                                                              abs=1e-12)
    # the identity resample is plain COCOeval AP
    from detectors.evaluate import evaluate_coco
    assert stats._accumulate_on(ev, np.arange(len(ids))) == pytest.approx(evaluate_coco(gt, dets)["metrics"]["AP"])


def test_bootstrap_difference_is_paired_and_ordered(tmp_path):
    import json

    gt_path = fakes.write_ground_truth(str(tmp_path / "gt.json"), num_images=20)
    gt, raw = stats.load_gt(gt_path), json.load(open(gt_path))
    good = [fakes.fake_detections(raw, 0.5, 0, seed=s) for s in (0, 1)]
    bad = [fakes.fake_detections(raw, 6.0, 4, seed=s) for s in (2, 3)]
    boot = stats.bootstrap_ap(gt, {"good": good, "bad": bad}, resamples=30, rng_seed=0)
    assert boot["good"].shape == (30,)
    d = stats.bootstrap_difference(boot["good"], boot["bad"])
    assert d["lo"] > 0 and d["p_better"] == 1.0
    again = stats.bootstrap_ap(gt, {"good": good, "bad": bad}, resamples=30, rng_seed=0)
    assert np.array_equal(again["good"], boot["good"])  # deterministic for a seed


def test_pareto_front():
    pts = pd.DataFrame({"variant": ["a", "b", "c", "d"], "lat": [1.0, 2.0, 3.0, 2.5], "ap": [0.2, 0.5, 0.6, 0.4]})
    # d is beaten by b (faster and more accurate)
    assert pareto_front(pts, "lat", "ap") == ["a", "b", "c"]


def _study(variants_params, study_trials):
    final = pd.DataFrame([{"trial_key": t["trial_key"], "variant": t["variant"], "seed": t["seed"], "AP": ap}
                          for t, ap in study_trials])
    trials = [dict(t, status="finished") for t, _ in study_trials]
    return StudyData("s", {}, trials, final, pd.DataFrame(), list(variants_params), ["loss.params.gamma"],
                     variants_params)


def _trial(gamma, alpha, seed, name="focal"):
    v = f"gamma={gamma},alpha={alpha}"
    return {"trial_key": f"{v}/seed={seed}", "variant": v, "seed": seed,
            "config": {"loss": {"name": name, "params": {"gamma": gamma, "alpha": alpha}}}}


def test_paper_tables_match_by_config_not_name():
    tables = {t["id"]: t for t in load_tables()}
    assert {"focal_table1a", "focal_table1b", "gfl_table1c", "gfl_table2a", "gfl_table3", "frcnn_table5"} <= set(tables)
    for t in tables.values():
        assert t["source"] and t["rows"] and t["metric"]
    ts = [(_trial(0, 0.75, 0), 0.30), (_trial(2, 0.25, 0), 0.40), (_trial(3, 0.25, 0), 0.45)]
    sd = _study({"gamma=0,alpha=0.75": {}, "gamma=2,alpha=0.25": {}, "gamma=3,alpha=0.25": {}}, ts)
    m = match_variants(sd, tables["focal_table1b"])
    assert set(m) == {"gamma=0,alpha=0.75", "gamma=2,alpha=0.25"}   # gamma 3 is not in Table 1b
    assert m["gamma=2,alpha=0.25"]["value"] == 34.0
    # Table 1a (gamma 0, varying alpha): one variant only
    assert set(match_variants(sd, tables["focal_table1a"])) == {"gamma=0,alpha=0.75"}
    # balanced CE trials would not match Table 1b (loss name differs)
    ce = [(_trial(0, 0.75, 0, "balanced_ce"), 0.3), (_trial(2, 0.25, 0, "balanced_ce"), 0.4)]
    sd_ce = _study({"gamma=0,alpha=0.75": {}, "gamma=2,alpha=0.25": {}}, ce)
    assert match_variants(sd_ce, tables["focal_table1b"]) == {}


def test_paper_marks():
    tables = {t["id"]: t for t in load_tables()}
    ts = [(_trial(0, 0.75, 0), 0.30), (_trial(2, 0.25, 0), 0.40), (_trial(5, 0.25, 0), 0.50),
          (_trial(1, 0.25, 0), 0.39)]
    sd = _study({v: {} for v in ("gamma=0,alpha=0.75", "gamma=1,alpha=0.25", "gamma=2,alpha=0.25",
                                 "gamma=5,alpha=0.25")}, ts)
    cis = {"gamma=0,alpha=0.75": (-0.12, -0.08), "gamma=5,alpha=0.25": (0.05, 0.15),
           "gamma=1,alpha=0.25": (-0.05, 0.03)}

    def diff(a, b, metric):
        assert b == "gamma=2,alpha=0.25" and metric == "AP"   # the paper's best is the reference
        lo, hi = cis[a]
        return (lo + hi) / 2, lo, hi, "test"

    table = tables["focal_table1b"]
    c = compare(sd, table, match_variants(sd, table), diff)
    rows = {r["variant"]: r for r in c["rows"]}
    assert rows["gamma=2,alpha=0.25"]["mark"] == "reference"
    assert rows["gamma=0,alpha=0.75"]["mark"] == "reproduced"          # paper -2.9, ours [-12, -8]
    assert rows["gamma=5,alpha=0.25"]["mark"] == "not reproduced"      # paper -1.8, ours [+5, +15]
    assert "opposite" in rows["gamma=5,alpha=0.25"]["why"]
    assert rows["gamma=1,alpha=0.25"]["mark"] == "not reproduced"      # CI spans 0
    assert rows["gamma=0,alpha=0.75"]["paper_gap"] == pytest.approx(-2.9)
    assert rows["gamma=0,alpha=0.75"]["our_gap"] == pytest.approx(-10.0)  # in AP percent
    o = c["ordering"]
    assert o["paper"][0] == "gamma=2,alpha=0.25" and o["ours"][0] == "gamma=5,alpha=0.25"
    assert o["held"] is False and o["best_held"] is False


def test_one_factor_tables_ignore_variants_that_change_another_factor():
    # GFL Table 1c varies beta on the full GFL detector (n = 16, Delta = 1). A variant with
    # beta 2 but n = 8 must not be taken for the beta = 2 row; and two variants that both
    # replay one row (here: same beta, a difference the table does not pin) are left out.
    tables = {t["id"]: t for t in load_tables()}

    def gfl(variant, beta, reg_max, seed=0, box="general_dfl"):
        return ({"trial_key": f"{variant}/seed={seed}", "variant": variant, "seed": seed,
                 "config": {"loss": {"name": "qfl", "params": {"beta": beta}},
                            "detector": {"name": "dense", "params": {"quality": "joint", "box": box,
                                                                     "reg_max": reg_max, "bin_width": 1.0}}}}, 0.5)

    trials = [gfl("gfl", 2.0, 16), gfl("beta=0", 0.0, 16), gfl("n=8", 2.0, 8)]
    sd = _study({v: {} for v in ("gfl", "beta=0", "n=8")}, trials)
    assert set(match_variants(sd, tables["gfl_table1c"])) == {"gfl", "beta=0"}

    twins = [gfl("a", 2.0, 16), gfl("b", 2.0, 16), gfl("beta=0", 0.0, 16)]
    sd = _study({v: {} for v in ("a", "b", "beta=0")}, twins)
    assert set(match_variants(sd, tables["gfl_table1c"])) == {"beta=0"}
