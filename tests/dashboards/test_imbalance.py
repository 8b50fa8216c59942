"""The imbalance section of the accuracy page on a fake study with hand-set AP (fakes.IMBALANCE)."""
import copy
import math
import os

import pytest

import fakes


@pytest.fixture(scope="module")
def imbalance(tmp_path_factory):
    from platform.track.store import Store

    from dashboards import build_study

    root = tmp_path_factory.mktemp("imbalance")
    store = Store(f"sqlite:///{root}/r.db")
    fakes.populate_imbalance(store)
    ctx = build_study(store, fakes.IMBALANCE_STUDY, str(root / "reports"), resamples=10)
    store.close()
    yield ctx, (root / "reports" / fakes.IMBALANCE_STUDY / "accuracy.html").read_text()


def test_levels_gains_and_trend_by_hand(imbalance):
    from dashboards.imbalance import imbalance_levels

    res = imbalance_levels(imbalance[0].sd)
    # Most imbalanced first: 384 px has foreground 0.0008 (epochs 0.9x, 1x, 1.1x: mean 0.0008), 128 px 0.006.
    more, less = res["levels"]
    assert (more["name"], less["name"]) == ("image_size=384", "image_size=128")
    assert more["fg_fraction"] == pytest.approx(0.0008) and less["fg_fraction"] == pytest.approx(0.006)
    assert (more["anchors_per_image"], less["anchors_per_image"]) == (27621, 3069)
    # t(0.975, 2) = 4.302653; 3 seeds.
    # 128 px gains 0.02, 0.01, 0.03: mean 0.02, sd 0.01, half 4.302653 * 0.01 / sqrt(3) = 0.024841
    assert less["gain"]["mean"] == pytest.approx(0.02)
    assert less["gain"]["half"] == pytest.approx(0.024841, abs=1e-6)
    # 384 px gains 0.06, 0.04, 0.07: mean 0.056667
    assert more["gain"]["mean"] == pytest.approx(0.17 / 3)
    # Gain differences per seed (384 - 128): 0.04, 0.03, 0.04: mean 0.036667, sd sqrt((2 * 0.003333^2 +
    # 0.006667^2) / 2) = 0.0057735, half 4.302653 * 0.0057735 / sqrt(3) = 0.014342 -> [0.022324, 0.051009]
    t = res["trend"]
    assert (t["more"], t["less"], t["n"]) == ("image_size=384", "image_size=128", 3)
    assert t["mean"] == pytest.approx(0.11 / 3)
    assert (t["lo"], t["hi"]) == (pytest.approx(0.022324, abs=1e-6), pytest.approx(0.051009, abs=1e-6))
    assert t["significant"] is True
    assert res["labels"][res["base"]] == "focal (alpha=0.75, gamma=0.0)"
    assert res["labels"][res["focal"]] == "focal (alpha=0.25, gamma=2.0)"


def test_accuracy_page_states_fractions_gains_and_the_verdict(imbalance):
    text = imbalance[1].split("<h2>Focal loss and foreground imbalance</h2>")[1].split("<div style")[0]
    # 384 px row: 0.08% = 1 in 1 / 0.0008 = 1,250; AP 0.210 and 0.267 (0.26 + 0.26 + 0.28) / 3
    assert ('<td class="l">image_size=384</td><td>6</td><td>0.08% (1 in 1,250)</td><td>27,621</td>'
            '<td>0.210 <span class="note">± 0.025</span></td><td>0.267') in text
    assert '<td class="l">image_size=128</td><td>6</td><td>0.6% (1 in 167)</td><td>3,069</td>' in text
    assert '+0.020 <span class="note">[-0.005, +0.045]</span>' in text  # 0.02 ± 0.024841
    assert ("is <b>larger</b> at the more imbalanced level (image_size=384, foreground 0.08% (1 in 1,250)) than at "
            "image_size=128 (foreground 0.6% (1 in 167)): by +0.037 <span class=\"note\">[+0.022, +0.051]</span> "
            "AP over 3 matching seeds, an interval that excludes 0.") in text


def test_no_section_where_the_variants_share_one_dataset(fake_reports):
    from dashboards.imbalance import imbalance_levels

    assert imbalance_levels(fake_reports["ctx"].sd) is None  # three losses, one dataset
    text = (fake_reports["reports"] / fakes.STUDY / "accuracy.html").read_text()
    assert "foreground imbalance" not in text


def test_unknown_foreground_fraction_says_so(imbalance):
    from dashboards.imbalance import imbalance_levels
    from dashboards.comparisons import _trend_sentence

    sd = copy.copy(imbalance[0].sd)
    sd.epochs = sd.epochs[sd.epochs["name"] != "train/fg_fraction"]  # a detector that logs no assignment figures
    res = imbalance_levels(sd)
    assert res["trend"] is None and all(math.isnan(lv["fg_fraction"]) for lv in res["levels"])
    assert _trend_sentence(res).startswith("Which level is more imbalanced is unknown")


def test_no_winner_across_datasets(imbalance):
    """Two imbalance levels are two datasets: AP on 384 px images does not rank against AP on 128 px ones,
    so the overview declares no winner (the accuracy page compares within each level)."""
    from dashboards.analysis import verdict

    ctx = imbalance[0]
    h = ctx.an.headline()
    assert h["winner"] is None and h["datasets"] == 2
    assert verdict(h).startswith("No winner: the variants trained and were scored on 2 different datasets")
    text = open(os.path.join(ctx.study_dir, "index.html")).read()
    assert "<b>No winner</b>: the variants trained and were scored on 2 different datasets" in text
    assert "Winner:" not in text
