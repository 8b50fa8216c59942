"""The tuning page: Dodge et al.'s expected best score, the ranking's stability, range edges, and the page built from a
store with tuning trials (tests/dashboards/fakes.py: populate_tuned) against one without."""
import itertools
import math
import re

import pytest

import fakes
from dashboards.tuning import at_edge, expected_max, expected_max_curve, range_position, stable_from


def test_expected_max_by_hand():
    # n = 1: every weight (i/4) - ((i-1)/4) = 1/4, the mean: (1+2+3+4)/4 = 2.5;
    # E[max^2] = (1+4+9+16)/4 = 7.5, sd = sqrt(7.5 - 2.5^2) = sqrt(1.25) = 1.118034
    assert expected_max([4, 2, 1, 3], 1) == pytest.approx((2.5, 1.118034), abs=1e-6)
    # n = 4: weights (i/4)^4 - ((i-1)/4)^4 = 1/256, 15/256, 65/256, 175/256 (sum 256/256);
    # E[max] = (1*1 + 2*15 + 3*65 + 4*175)/256 = (1+30+195+700)/256 = 926/256 = 3.6171875;
    # E[max^2] = (1*1 + 4*15 + 9*65 + 16*175)/256 = (1+60+585+2800)/256 = 3446/256 = 13.4609375;
    # sd = sqrt(13.4609375 - 3.6171875^2) = sqrt(0.37689209) = 0.6139154
    assert expected_max([1, 2, 3, 4], 4) == pytest.approx((3.6171875, 0.6139154), abs=1e-6)
    # equal scores: the maximum is that score, with no spread
    assert expected_max([0.3, 0.3, 0.3], 5) == pytest.approx((0.3, 0.0), abs=1e-12)
    assert all(math.isnan(x) for x in expected_max([], 1))


def test_expected_max_equals_enumerating_every_draw():
    # the definition: the mean (and sd) of max over all N^n equally likely draws with replacement
    scores = [0.3, 0.1, 0.5, 0.5, 0.2]
    mean, sd = expected_max_curve(scores)
    assert len(mean) == len(sd) == 5
    for n in range(1, 6):
        maxima = [max(draw) for draw in itertools.product(scores, repeat=n)]
        m = sum(maxima) / len(maxima)
        assert mean[n - 1] == pytest.approx(m, abs=1e-12)
        assert sd[n - 1] == pytest.approx(math.sqrt(sum((x - m) ** 2 for x in maxima) / len(maxima)), abs=1e-12)
    assert mean == sorted(mean)  # more samples never lower the expected best


def test_fake_study_ranking_flips_after_one_sample():
    # gamma=2 scores 0.1 .. 0.8 (sorted v_i = i/10): n = 1 its mean 0.45 < gamma=0's mean (6*0.5 + 0.52 + 0.48)/8
    # = 0.5; n = 2: sum (i/10) * ((i/8)^2 - ((i-1)/8)^2) = sum i(2i-1) / 640 = (2*204 - 36)/640 = 372/640 = 0.58125,
    # above gamma=0's best score 0.52 and so above its expectation at every n
    g2 = [s for _, _, s, _ in fakes.TUNED["gamma=2,alpha=0.25"]]
    g0 = [s for _, _, s, _ in fakes.TUNED["gamma=0,alpha=0.75"]]
    assert expected_max(g2, 1)[0] == pytest.approx(0.45)
    assert expected_max(g0, 1)[0] == pytest.approx(0.5)
    assert expected_max(g2, 2)[0] == pytest.approx(0.58125)
    assert stable_from({"g0": expected_max_curve(g0)[0], "g2": expected_max_curve(g2)[0]}) == 2


def test_stable_from():
    # rankings at n = 1, 2, 3: b a / b a / a b: changes at the last n
    assert stable_from({"a": [1.0, 2.0, 3.0], "b": [2.0, 2.5, 2.9]}) == 3
    # b a / a b / a b: the same from n = 2
    assert stable_from({"a": [1.0, 3.0, 4.0], "b": [2.0, 2.5, 2.9]}) == 2
    assert stable_from({"a": [3.0, 4.0], "b": [1.0, 2.0], "c": [0.0, 1.0]}) == 1
    # only the n every curve reaches count (N = 2): a b at n = 2 and n = 1
    assert stable_from({"a": [2.0, 3.0, 0.0], "b": [1.0, 2.0]}) == 1
    assert stable_from({"a": [1.0, 2.0]}) is None


def test_range_edges_on_the_scale_searched():
    # lr in [3e-4, 1e-2], log: 0.0098 sits at ln(0.0098/3e-4)/ln(1e-2/3e-4) = 3.48640/3.50656 = 0.99424 -> top 5%
    assert range_position(0.0098, 3e-4, 1e-2, log=True) == pytest.approx(0.994239, abs=1e-6)
    assert at_edge(0.0098, 3e-4, 1e-2, log=True) == "high"
    # 0.0006: ln 2 / 3.50656 = 0.19767 on the log scale (not an edge), (0.0006-0.0003)/0.0097 = 0.03093 linearly (one)
    assert range_position(0.0006, 3e-4, 1e-2, log=True) == pytest.approx(0.197672, abs=1e-6)
    assert at_edge(0.0006, 3e-4, 1e-2, log=True) is None
    assert at_edge(0.0006, 3e-4, 1e-2, log=False) == "low"
    # warmup_iters in [0, 200], linear: 10/200 = 0.05 is on the edge, 11/200 = 0.055 is not; 195/200 = 0.975 is
    assert at_edge(10, 0, 200, log=False) == "low"
    assert at_edge(11, 0, 200, log=False) is None
    assert at_edge(195, 0, 200, log=False) == "high"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from platform.track.store import Store

    from dashboards import build_study

    root = tmp_path_factory.mktemp("tuned")
    store = Store(f"sqlite:///{root}/results.db")
    fakes.populate_tuned(store)
    ctx = build_study(store, fakes.TUNED_STUDY, str(root / "reports"), resamples=10)
    yield {"store": store, "ctx": ctx, "reports": root / "reports"}
    store.close()


def test_tuning_page_states_the_search_and_the_choices(tuned):
    text = (tuned["reports"] / fakes.TUNED_STUDY / "tuning.html").read_text()
    assert tuned["ctx"].plots["tuning.html"] == 3  # score vs the 2 keys (one figure), tuning curve, expected best
    assert text.count('class="plotly-graph-div"') == 3
    assert "<code>train.lr</code>: 0.0003 to 0.01, log scale" in text
    assert "<code>train.warmup_iters</code>: 0 to 200, linear scale" in text
    assert "Optuna&#x27;s TPE sampler" in text and "20% of the train images" in text
    assert "Every variant got the same budget" in text and "was never used to tune" in text
    section = text.split("<h2>Per variant</h2>")[1].split("<h2>")[0]
    rows = dict(re.findall(r'<tr><td class="l">(gamma=[^<]+)</td>(.*?)</tr>', section))
    cells = {v: re.findall(r"<td[^>]*>(.*?)</td>", r) for v, r in rows.items()}
    # samples, epochs (gamma=2: 3 stopped after 1 epoch + 5 x 3 = 18; gamma=0: 8 x 3 = 24), stopped early,
    # chosen lr and warmup_iters, tuning score, sample
    assert cells["gamma=2,alpha=0.25"][:7] == ["8 of 8", "18", "3", "0.0098", "150", "0.800", "4"]
    assert cells["gamma=0,alpha=0.75"][:7] == ["8 of 8", "24", "0", "0.002", "37", "0.520", "1"]
    assert "0.900" not in text  # the older search's sample (score 0.9) is no part of gamma=0's current one
    assert ("gamma=2,alpha=0.25: the best lr is at the range's edge: the search may have cut it off (0.0098, "
            "at the high end") in text
    assert text.count("at the range's edge") == 1  # gamma=0's 0.002 and 37 are inside
    assert ("From n = 2 on, the ranking of the variants by expected best tuning AP stays the same up to N = 8: "
            "gamma=2,alpha=0.25 &gt; gamma=0,alpha=0.75.") in text
    assert "count with the score they had when stopped (a lower bound" in text


def test_tuning_page_is_linked_and_the_tuning_study_is_not_listed(tuned):
    from dashboards.fingerprint import fingerprint, is_current

    study = tuned["reports"] / fakes.TUNED_STUDY
    for name in ("index.html", "accuracy.html", "speed.html", "loss.html", "tuning.html"):
        assert '<a href="tuning.html"' in (study / name).read_text(), name
    assert '<a href="tuning.html" class=here>Tuning</a>' in (study / "tuning.html").read_text()
    assert f"{fakes.TUNED_STUDY}.tune" not in (tuned["reports"] / "index.html").read_text()
    # the fingerprint file names the tuning page: without it the pages are not current
    fp = fingerprint(tuned["store"], fakes.TUNED_STUDY, resamples=10)
    assert is_current(str(tuned["reports"]), fakes.TUNED_STUDY, fp)
    page = (study / "tuning.html").read_text()
    (study / "tuning.html").unlink()
    assert not is_current(str(tuned["reports"]), fakes.TUNED_STUDY, fp)
    (study / "tuning.html").write_text(page)


def test_tuning_trials_load_though_studies_leaves_them_out(tuned):
    from dashboards.tuning import load_tuning

    class Hiding:  # the store's contract: studies() lists no "<study>.tune"
        def __init__(self, store):
            self.store = store

        def studies(self):
            return [s for s in self.store.studies() if not s["name"].endswith(".tune")]

        def __getattr__(self, name):
            return getattr(self.store, name)

    tsd = load_tuning(Hiding(tuned["store"]), fakes.TUNED_STUDY)
    assert tsd.name == f"{fakes.TUNED_STUDY}.tune" and len(tsd.finished) == 17  # 2 x 8 samples + the old search's
    assert load_tuning(Hiding(tuned["store"]), "no_such_study") is None


def test_a_study_without_tuning_has_no_tuning_page(fake_reports):
    study = fake_reports["reports"] / fakes.STUDY
    assert not (study / "tuning.html").exists()
    assert "tuning.html" not in fake_reports["ctx"].plots
    for name in ("index.html", "accuracy.html", "speed.html", "loss.html"):
        assert "tuning.html" not in (study / name).read_text(), name
