"""Statistics and paper matching behind the pages, on hand-checkable numbers."""
import math

import numpy as np
import pandas as pd
import pytest

from dashboards import stats
from dashboards.data import StudyData
from dashboards.figures import pareto_front
from dashboards.paper import compare, load_tables, match_variants
from detectors.evaluation.cocotools import coco_ground_truth

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


def test_paired_tost_by_hand():
    # d = 0.001, 0.002, 0.003: mean 0.002, sd 0.001, se = 0.001 / sqrt 3 = 0.00057735.
    # Difference: t = 0.002 / se = 3.4641 -> p = 0.07418 (as above): not significant.
    # TOST, margin 0.01: t_low = 0.012 / se = 20.785, t_high = -0.008 / se = -13.856; with 2 df
    # sf(t) = (1 - t / sqrt(t^2 + 2)) / 2, so p_high = (1 - 13.856 / sqrt(194)) / 2 = 0.002584
    # and p_low = 0.001153: p_equiv = max = 0.002584 < 0.05 -> equivalent within 1 AP.
    a = {0: 0.501, 1: 0.502, 2: 0.503}
    b = {0: 0.5, 1: 0.5, 2: 0.5}
    d = stats.paired_difference(a, b, margin=0.01)
    assert d["p"] == pytest.approx(0.07418, abs=1e-4)
    assert d["p_equiv"] == pytest.approx(0.002584, abs=1e-5)
    ev = stats.seed_evidence(d, 0.01)
    assert ev["sign"] == 0 and ev["equivalent"] is True and "equivalent within ±1.0 AP" in ev["text"]
    # The same differences times 10 (mean 0.02, se 0.0057735): neither significant (same t) nor
    # within 1 AP: t_high = (0.02 - 0.01) / se = 1.732, p_high = P(T <= 1.732)
    # = 1 - (1 - 1.732 / sqrt 5) / 2 = 0.8873.
    wide = stats.paired_difference({s: 0.5 + 10 * (a[s] - 0.5) for s in a}, b, margin=0.01)
    assert wide["p_equiv"] == pytest.approx(0.8873, abs=1e-4)
    assert stats.seed_evidence(wide, 0.01)["equivalent"] is False


def test_identical_differences_are_not_p_zero():
    # All differences 0: t = 0 / 0; nothing to explain, p = 1.
    same = stats.paired_difference({0: 0.4, 1: 0.5, 2: 0.6}, {0: 0.4, 1: 0.5, 2: 0.6}, margin=0.01)
    assert same["degenerate"] and same["p"] == 1.0 and (same["lo"], same["hi"]) == (0.0, 0.0)
    assert stats.seed_evidence(same, 0.01)["sign"] == 0
    # A constant non-zero gap (0.7 - 0.6 and 0.5 - 0.4 differ only in float rounding): t = 0.1 / 0
    # would print p = 0; it is reported as no p and no verdict instead.
    const = stats.paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6}, margin=0.01)
    assert const["degenerate"] and math.isnan(const["p"]) and math.isnan(const["lo"])
    assert const["mean"] == pytest.approx(0.1)
    ev = stats.seed_evidence(const, 0.01)
    assert ev["sign"] is None and ev["equivalent"] is None and "same difference on every seed" in ev["text"]


def test_fewer_than_three_seeds_give_no_seed_verdict():
    # d = 0.10, 0.11: a t test would give t = 0.105 / (0.00707 / sqrt 2) = 21 and p = 0.03 (1 df),
    # "significant" from two trainings per variant: below MIN_SEEDS there is no verdict.
    d = stats.paired_difference({0: 0.5, 1: 0.61}, {0: 0.4, 1: 0.5}, margin=0.01)
    assert d["p"] == pytest.approx(0.0303, abs=1e-3)
    ev = stats.seed_evidence(d, 0.01)
    assert ev["sign"] is None and ev["text"] == "over seeds: too few seeds (2) to tell"


def _boot(lo, hi, p_equiv=1.0):
    return {"lo": lo, "hi": hi, "p_better": 0.5, "n": 100, "p_equiv": p_equiv}


def test_decide_needs_both_tests():
    sig3 = stats.paired_difference({0: 0.5, 1: 0.7, 2: 0.6}, {0: 0.3, 1: 0.4, 2: 0.35}, margin=0.01)
    assert sig3["p"] < 0.05 and sig3["mean"] > 0  # d = 0.2, 0.3, 0.25: t = 0.25 / (0.05 / sqrt 3) = 8.66
    one_seed = stats.paired_difference({0: 0.5}, {0: 0.3}, margin=0.01)
    # 1 seed + a significant bootstrap used to read "significant": now can't tell
    d = stats.decide(one_seed, _boot(0.1, 0.3), 0.01)
    assert d["sign"] is None and "too few seeds (1)" in d["why"] and "over images (bootstrap): significant" in d["why"]
    assert stats.decide(sig3, _boot(0.1, 0.3), 0.01)["sign"] == 1
    assert stats.decide(sig3, None, 0.01)["sign"] is None             # no image evidence
    split = stats.decide(sig3, _boot(-0.01, 0.3), 0.01)             # the bootstrap spans 0
    assert split["sign"] == 0 and split["split"] is True
    assert stats.decide(sig3, _boot(-0.3, -0.1), 0.01)["sign"] == 0  # opposite sides: no verdict either way
    assert stats.decide(sig3, None, None, needs_images=False)["sign"] == 1  # speed: seeds alone
    # equivalence needs both TOSTs
    close = stats.paired_difference({0: 0.501, 1: 0.502, 2: 0.503}, {0: 0.5, 1: 0.5, 2: 0.5}, margin=0.01)
    assert stats.decide(close, _boot(-0.004, 0.008, p_equiv=0.01), 0.01)["equivalent"] is True
    assert stats.decide(close, _boot(-0.004, 0.02, p_equiv=0.2), 0.01)["equivalent"] is False
    assert stats.decide(close, None, 0.01)["equivalent"] is None


def test_bootstrap_tost_share_outside_the_margin():
    # 100 paired resamples, d = A - B: 3 at -0.02, 2 at +0.015, 95 at 0.0 -> shares 0.03 and 0.02
    a = np.array([-0.02] * 3 + [0.015] * 2 + [0.0] * 95)
    d = stats.bootstrap_difference(a, np.zeros(100), margin=0.01)
    assert d["p_equiv"] == pytest.approx(0.03) and d["p_better"] == pytest.approx(0.02)
    assert stats.image_evidence(d, 0.01)["equivalent"] is True
    wider = stats.bootstrap_difference(np.array([-0.02] * 6 + [0.0] * 94), np.zeros(100), margin=0.01)
    assert wider["p_equiv"] == pytest.approx(0.06) and stats.image_evidence(wider, 0.01)["equivalent"] is False


def test_headline_verdict_with_one_seed_and_no_bootstrap():
    from dashboards.analysis import Analysis, verdict

    ts = [(_trial(2, 0.25, 0), 0.40), (_trial(0, 0.75, 0), 0.30)]
    sd = _study({"gamma=0,alpha=0.75": {}, "gamma=2,alpha=0.25": {}}, ts)
    h = Analysis(sd).headline()
    assert h["winner"] == "gamma=2,alpha=0.25" and h["decision"]["sign"] is None
    text = verdict(h)
    assert text.startswith("Can't tell whether the lead is real")
    assert "too few seeds (1) to tell" in text and "over images: not available" in text


def test_bootstrap_equals_evaluating_a_resampled_ground_truth(tmp_path):
    """The fast path (per-image records re-ordered under fresh ids + COCOeval.accumulate) gives
    exactly the AP of COCOeval on a ground truth rebuilt from the resampled images."""
    import json

    gt_path = fakes.write_ground_truth(str(tmp_path / "gt.json"), num_images=12)
    raw = json.load(open(gt_path))
    gt = coco_ground_truth(raw)
    dets = fakes.fake_detections(raw, jitter=3.0, false_pos=3, seed=1)
    ids = sorted(gt.getImgIds())
    ev = stats._evaluated(gt, dets, ids)
    records = stats.ImageRecords(ev)
    rng = np.random.default_rng(3)
    for _ in range(4):
        idx = rng.integers(0, len(ids), len(ids))  # with repeats
        assert stats._accumulate_on(ev, idx) == pytest.approx(stats.resampled_ap(gt, dets, [ids[i] for i in idx]),
                                                              abs=1e-12)
        # the numpy accumulation (what bootstrap_ap runs) is COCOeval's, bit for bit
        assert records.ap(idx) == stats._accumulate_on(ev, idx)
    # the identity resample is plain COCOeval AP
    from detectors.evaluation.evaluate import evaluate_coco
    assert stats._accumulate_on(ev, np.arange(len(ids))) == pytest.approx(evaluate_coco(gt, dets)["metrics"]["AP"])


def test_bootstrap_difference_is_paired_and_ordered(tmp_path):
    import json

    gt_path = fakes.write_ground_truth(str(tmp_path / "gt.json"), num_images=20)
    raw = json.load(open(gt_path))
    gt = coco_ground_truth(raw)
    good = [fakes.fake_detections(raw, 0.5, 0, seed=s) for s in (0, 1)]
    bad = [fakes.fake_detections(raw, 6.0, 4, seed=s) for s in (2, 3)]
    boot = stats.bootstrap_ap(gt, {"good": good, "bad": bad}, resamples=30, rng_seed=0)
    assert boot["good"].shape == (30,)
    d = stats.bootstrap_difference(boot["good"], boot["bad"])
    assert d["lo"] > 0 and d["p_better"] == 1.0
    again = stats.bootstrap_ap(gt, {"good": good, "bad": bad}, resamples=30, rng_seed=0)
    assert np.array_equal(again["good"], boot["good"])  # deterministic for a seed


def test_probability_of_improvement_known_answers():
    # complete separation: every one of the 3 x 3 pairs has X above Y -> U = 9, 9 / 9 = 1; every bootstrap
    # draw keeps the separation, so the interval is the point
    sep = stats.probability_of_improvement([[1.0, 2.0, 3.0]], [[0.0, 0.0, 0.0]])
    assert (sep["p"], sep["lo"], sep["hi"]) == (1.0, 1.0, 1.0)
    # the same runs: pairs (1,1) tie 0.5, (1,2) 0, (2,1) 1, (2,2) tie 0.5 -> 2 / 4 = 0.5
    same = stats.probability_of_improvement([[1.0, 2.0]], [[1.0, 2.0]])
    assert same["p"] == 0.5 and same["lo"] <= 0.5 <= same["hi"]
    # 0.3 beats 0.1 only (1); each 0.5 ties 0.5 and beats 0.1 (1.5 each): 4 / 6
    ties = stats.probability_of_improvement([[0.3, 0.5, 0.5]], [[0.5, 0.1]])
    assert ties["p"] == pytest.approx(4 / 6)
    assert ties["lo"] <= ties["p"] <= ties["hi"]
    # a fixed numpy seed: the same interval on every call; a NaN run is dropped, no run at all gives NaN
    assert stats.probability_of_improvement([[0.3, 0.5, 0.5]], [[0.5, 0.1, math.nan]]) == ties
    assert math.isnan(stats.probability_of_improvement([[math.nan]], [[0.1]])["p"])


def test_probability_of_improvement_is_stratified_by_task():
    # task 1: X above Y in all 9 pairs (1); task 2: one run each, X 0 below Y 1 (0) -> mean over tasks 0.5. Each
    # task's runs are resampled within it, so every draw gives 1 and 0 again: the interval is [0.5, 0.5]. Pooling
    # the runs instead would give X = 1, 2, 3, 0 against Y = 0, 0, 0, 1: (3.5 + 4 + 4 + 1.5) / 16 = 0.8125.
    pi = stats.probability_of_improvement([[1.0, 2.0, 3.0], [0.0]], [[0.0, 0.0, 0.0], [1.0]])
    assert (pi["p"], pi["lo"], pi["hi"], pi["tasks"]) == (0.5, 0.5, 0.5, 2)
    pooled = stats.probability_of_improvement([[1.0, 2.0, 3.0, 0.0]], [[0.0, 0.0, 0.0, 1.0]])
    assert pooled["p"] == 0.8125


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
    assert {"focal_table1a", "focal_table1b", "gfl_table1c", "gfl_table2a", "gfl_table3",
            "frcnn_table5_total"} <= set(tables)
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


def _evidence(seed_diffs, boot_lo, boot_hi, boot_p_equiv=1.0, margin=0.01):
    """A ``DiffFn`` answer from per-seed differences and a bootstrap interval, through stats.decide."""
    paired = stats.paired_difference(dict(enumerate(seed_diffs)), {s: 0.0 for s in range(len(seed_diffs))},
                                     margin=margin)
    boot = _boot(boot_lo, boot_hi, boot_p_equiv)
    return dict(diff=(boot_lo + boot_hi) / 2, lo=boot_lo, hi=boot_hi, method="test",
                **stats.decide(paired, boot, margin))


def test_paper_marks():
    tables = {t["id"]: t for t in load_tables()}
    variants = ("gamma=0,alpha=0.75", "gamma=0.5,alpha=0.5", "gamma=1,alpha=0.25", "gamma=2,alpha=0.25",
                "gamma=5,alpha=0.25")
    ts = [(_trial(0, 0.75, 0), 0.30), (_trial(2, 0.25, 0), 0.40), (_trial(5, 0.25, 0), 0.50),
          (_trial(1, 0.25, 0), 0.39), (_trial(0.5, 0.5, 0), 0.35)]
    sd = _study({v: {} for v in variants}, ts)
    evidence = {
        # both tests below 0, as the paper (-2.9): d = -0.10, -0.12, -0.08 -> t = -8.66, p = 0.013
        "gamma=0,alpha=0.75": _evidence([-0.10, -0.12, -0.08], -0.12, -0.08),
        # both tests above 0, the paper says below (-1.8)
        "gamma=5,alpha=0.25": _evidence([0.10, 0.12, 0.08], 0.05, 0.15),
        # seeds significant, the bootstrap spans 0
        "gamma=1,alpha=0.25": _evidence([-0.10, -0.12, -0.08], -0.05, 0.03),
        # two seeds only: a clear bootstrap alone does not reproduce the row
        "gamma=0.5,alpha=0.5": _evidence([-0.05, -0.06], -0.08, -0.03),
    }

    def diff(a, b, metric):
        assert b == "gamma=2,alpha=0.25" and metric == "AP"   # the paper's best is the reference
        return evidence[a]

    table = tables["focal_table1b"]
    c = compare(sd, table, match_variants(sd, table), diff)
    rows = {r["variant"]: r for r in c["rows"]}
    assert rows["gamma=2,alpha=0.25"]["mark"] == "reference"
    assert rows["gamma=0,alpha=0.75"]["mark"] == "reproduced"          # paper -2.9, ours [-12, -8]
    assert rows["gamma=5,alpha=0.25"]["mark"] == "not reproduced"      # paper -1.8, ours [+5, +15]
    assert "opposite" in rows["gamma=5,alpha=0.25"]["why"]
    assert rows["gamma=1,alpha=0.25"]["mark"] == "not reproduced"      # the bootstrap CI spans 0
    assert "the tests disagree" in rows["gamma=1,alpha=0.25"]["why"]
    assert rows["gamma=0.5,alpha=0.5"]["mark"] == "undecided"
    assert "too few seeds (2) to tell" in rows["gamma=0.5,alpha=0.5"]["why"]
    assert rows["gamma=0,alpha=0.75"]["paper_gap"] == pytest.approx(-2.9)
    assert rows["gamma=0,alpha=0.75"]["our_gap"] == pytest.approx(-10.0)  # in AP percent
    o = c["ordering"]
    assert o["paper"][0] == "gamma=2,alpha=0.25" and o["ours"][0] == "gamma=5,alpha=0.25"
    assert o["held"] is False and o["best_held"] is False


def test_close_paper_rows_need_equivalence_on_both_tests():
    # Faster R-CNN sec. 3.2: alternating vs approximate joint training, "close results".
    table = {t["id"]: t for t in load_tables()}["frcnn_sec3_2_ap"]

    def trial(scheme, seed=0):
        return ({"trial_key": f"{scheme}/seed={seed}", "variant": scheme, "seed": seed,
                 "config": {"detector": {"name": "faster_rcnn", "params": {"training": scheme, "fpn": False}}}},
                0.5)

    sd = _study({"alternating": {}, "approximate_joint": {}}, [trial("alternating"), trial("approximate_joint")])
    within = [0.001, 0.002, 0.003]          # seed TOST p = 0.0026 (test_paired_tost_by_hand)
    cases = [
        (_evidence(within, -0.004, 0.008, boot_p_equiv=0.01), "reproduced"),
        # an interval containing 0 is not equivalence: the bootstrap reaches 2 AP past the margin
        (_evidence(within, -0.02, 0.02, boot_p_equiv=0.2), "not reproduced"),
        (_evidence([0.001, 0.002], -0.004, 0.008, boot_p_equiv=0.01), "undecided"),   # 2 seeds
        (_evidence([0.10, 0.12, 0.08], 0.05, 0.15), "not reproduced"),                 # clearly apart
    ]
    for answer, mark in cases:
        c = compare(sd, table, match_variants(sd, table), lambda a, b, m, answer=answer: answer)
        assert [r["mark"] for r in c["rows"]] == ["reference", mark], answer["why"]


def test_fpn_rows_come_from_the_shared_feature_table_and_a_missing_number_stays_undecided():
    # Our schemes all share the backbone: FPN Table 5 (shared, 4-step), not Table 3 (unshared).
    # Table 5 has FPN rows only (AP 34.3, AP@0.5 57.2), so the C4 row is null.
    tables = {t["id"]: t for t in load_tables()}
    for table_id, fpn_value in (("fpn_table5_ap", 34.3), ("fpn_table5_ap50", 57.2)):
        table = tables[table_id]
        assert table["source"] == "FPN, Table 5"
        assert {r["detector.params.fpn"]: r["value"] for r in table["rows"]} == {False: None, True: fpn_value}
    assert not [t for t in tables if t.startswith("fpn_table4")]

    def trial(scheme, fpn, ap):
        v = f"{scheme},fpn={fpn}"
        return ({"trial_key": f"{v}/seed=0", "variant": v, "seed": 0,
                 "config": {"detector": {"name": "faster_rcnn", "params": {"training": scheme, "fpn": fpn}}}}, ap)

    ts = [trial("alternating", False, 0.30), trial("alternating", True, 0.40),
          trial("approximate_joint", False, 0.31), trial("approximate_joint", True, 0.41)]
    sd = _study({t["variant"]: {} for t, _ in ts}, ts)
    table = tables["fpn_table5_ap"]
    matched = match_variants(sd, table)
    assert set(matched) == {"alternating,fpn=False", "alternating,fpn=True"}   # 4-step only

    def diff(a, b, metric):
        assert (a, b, metric) == ("alternating,fpn=False", "alternating,fpn=True", "AP")
        return _evidence([-0.10, -0.12, -0.08], -0.12, -0.08)   # C4 below FPN on both tests

    c = compare(sd, table, matched, diff)
    rows = {r["variant"]: r for r in c["rows"]}
    assert c["reference"] == "alternating,fpn=True" and c["ordering"] == {}   # one paper number: no ordering
    c4 = rows["alternating,fpn=False"]
    assert c4["paper"] is None and c4["paper_gap"] is None and c4["mark"] == "undecided"
    assert c4["why"].startswith("not available: the paper gives no number")
    assert c4["our_gap"] == pytest.approx(-10.0)   # (-0.12 + -0.08) / 2 in AP percent


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
