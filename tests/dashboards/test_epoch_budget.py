"""The ranking of variants at each epoch budget and from which budget on it holds (dashboards.budget)."""
import math

import pandas as pd
import pytest

from dashboards.budget import epoch_curves, epoch_means, rankings, stable_from


def test_three_variants_that_cross_at_epoch_2_are_stable_from_epoch_3():
    # epoch 1: a 0.30 > b 0.20 > c 0.10; epoch 2: b 0.35 > c 0.33 > a 0.32 (the means cross);
    # epochs 3 and 4: c > b > a, the last ordering -> stable from epoch 3
    means = {1: {"a": 0.30, "b": 0.20, "c": 0.10}, 2: {"a": 0.32, "b": 0.35, "c": 0.33},
             3: {"a": 0.33, "b": 0.37, "c": 0.40}, 4: {"a": 0.34, "b": 0.38, "c": 0.45}}
    ranks = rankings(means, ["a", "b", "c"])
    assert ranks == {1: ["a", "b", "c"], 2: ["b", "c", "a"], 3: ["c", "b", "a"], 4: ["c", "b", "a"]}
    assert stable_from(ranks) == 3


def test_a_pair_that_swaps_at_the_last_epoch_is_never_stable():
    # a ahead at epochs 1-3, b ahead at 4: the last ordering holds at the last epoch only
    means = {1: {"a": 0.2, "b": 0.1}, 2: {"a": 0.3, "b": 0.2}, 3: {"a": 0.35, "b": 0.3}, 4: {"a": 0.36, "b": 0.37}}
    assert stable_from(rankings(means, ["a", "b"])) is None


def test_an_ordering_that_never_changes_is_stable_from_the_first_epoch_and_one_epoch_is_not_enough():
    means = {1: {"a": 0.2, "b": 0.1}, 2: {"a": 0.3, "b": 0.2}}
    assert stable_from(rankings(means, ["a", "b"])) == 1
    assert stable_from(rankings({1: {"a": 0.2, "b": 0.1}}, ["a", "b"])) is None


def test_epochs_a_variant_lacks_are_not_ranked_and_ties_keep_the_sweep_order():
    # b has no epoch 3 (it trained 2), a NaN at epoch 4: neither epoch compares both; at epoch 1 they tie
    means = {1: {"a": 0.1, "b": 0.1}, 2: {"a": 0.1, "b": 0.2}, 3: {"a": 0.3}, 4: {"a": 0.3, "b": math.nan}}
    assert rankings(means, ["a", "b"]) == {1: ["a", "b"], 2: ["b", "a"]}
    assert rankings(means, ["b", "a"])[1] == ["b", "a"]


def test_epoch_curves_mean_and_t_interval_over_the_seeds_of_each_epoch():
    # a at epoch 1: seeds 0.1, 0.2, 0.3 -> mean 0.2, sd 0.1, half t(0.975, 2) 4.302653 * 0.1 / sqrt(3) = 0.248414;
    # at epoch 2 one seed only -> mean 0.5, no interval. val/AP50 rows and variant c are left out.
    rows = [("a", s, 1, "val/AP", v) for s, v in enumerate((0.1, 0.2, 0.3))] + [("a", 0, 2, "val/AP", 0.5)]
    rows += [("a", 0, 1, "val/AP50", 0.9), ("c", 0, 1, "val/AP", 0.7)]
    epochs = pd.DataFrame(rows, columns=["variant", "seed", "epoch", "name", "value"])
    curves = epoch_curves(epochs, ["a"])
    assert curves[["variant", "epoch", "n"]].values.tolist() == [["a", 1, 3], ["a", 2, 1]]
    assert curves["mean"].tolist() == pytest.approx([0.2, 0.5])
    assert curves["half"].iloc[0] == pytest.approx(0.248414, abs=1e-6) and math.isnan(curves["lo"].iloc[1])
    assert epoch_means(curves) == {1: {"a": pytest.approx(0.2)}, 2: {"a": 0.5}}
    assert epoch_curves(epochs.iloc[0:0], ["a"]).empty


def test_the_page_sentence_says_from_which_epoch_or_never():
    from dashboards.comparisons import _stability_text

    swap = {1: ["a", "b"], 2: ["a", "b"], 3: ["b", "a"]}
    assert _stability_text(swap) == ("The ranking is never stable within the run: the ordering at the last epoch "
                                     "(3) differs from the one at epoch 2, so a longer budget could change it again.")
    assert _stability_text({1: ["b", "a"], 2: ["a", "b"], 3: ["a", "b"]}).startswith(
        "The ranking is stable from epoch 2: the same ordering at every evaluated epoch from 2 to 3, the last.")
    assert _stability_text({4: ["a", "b"]}).startswith("Only epoch 4 was evaluated for every variant")
    assert _stability_text({}).startswith("No epoch at which every variant was evaluated")


def test_the_fake_zoo_ranking_settles_at_epoch_2(tmp_path):
    """fakes.ZOO: gfl's val AP rises as AP/3, 2 AP/3, AP (RISING), the others' as 0.7 AP, AP, AP (FLAT). With the
    zoo's final means, gfl is behind retinanet at epoch 1 and ahead from epoch 2 on."""
    import re

    import fakes
    from dashboards import build_study
    from platform.track.store import Store

    store = Store(f"sqlite:///{tmp_path}/r.db")
    fakes.populate_zoo(store, str(tmp_path))
    an = build_study(store, fakes.ZOO_STUDY, str(tmp_path / "reports"), resamples=10).an
    store.close()
    ap = an.summary("AP").set_index("variant")["mean"]
    gfl, retina = ap["detector=gfl"], ap["detector=retinanet"]
    assert gfl / 3 < 0.7 * retina and 2 * gfl / 3 > retina   # the premise: the crossing falls between epochs 1 and 2
    text = (tmp_path / "reports" / fakes.ZOO_STUDY / "accuracy.html").read_text()
    budget = text.split("<h2>Val AP by epoch budget</h2>")[1].split("<h2>")[0]
    assert "The ranking is stable from epoch 2: the same ordering at every evaluated epoch from 2 to 3" in budget
    firsts = re.findall(r'<tr><td class="l">\d+</td><td class="l">(detector=[a-z0-9]+)', budget)
    assert firsts == ["detector=retinanet", "detector=gfl", "detector=gfl"]
