"""sweep.tune: its validation, the tuning trials, the searcher adapter and the choice of values."""
import os

import pytest
import yaml

from platform.runner.callbacks import tuning_data
from platform.runner.searcher import SampleSearcher
from platform.runner.tuning import TuningFailed, TuningPlan, tuning_study
from platform.study.expand import expand, tuning_trial, variant_plans
from platform.study.load import StudyError, load_study

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPACE = {"train.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True}, "train.warmup_iters": {"low": 0, "high": 5}}


def study_file(tmp_path, tune=None, **sweep):
    with open(os.path.join(REPO, "studies", "smoke.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["sweep"] = {"grid": {"loss.params.gamma": [0, 2]}, "seeds": [0, 1], **sweep}
    if tune is not None:
        raw["sweep"]["tune"] = tune
    raw["output"] = {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("tune, fragment", [
    ({"space": {"train.lrr": {"low": 0.1, "high": 1}}}, "sweep.tune.space.train.lrr: no such key in the study "
                                                         "config; did you mean 'train.lr'?"),
    ({"space": {"train.lr": {"low": -1, "high": 1e-2}}}, "sweep.tune.space.train.lr.low: must be in (0, 10]"),
    ({"space": {"train.lr": {"low": 0.01, "high": 0.001}}}, "sweep.tune.space.train.lr.high: must be above low "
                                                            "(0.01), got 0.001"),
    ({"space": {"loss.params.alpha": {"low": 0, "high": 0.5, "log": True}}},
     "sweep.tune.space.loss.params.alpha.low: a log range needs low > 0, got 0.0"),
    ({"space": {"train.warmup_iters": {"low": 0.5, "high": 9}}}, "sweep.tune.space.train.warmup_iters.low: "
                                                                 "this key takes integers, got 0.5"),
    ({"space": {"loss.params.gamma": {"low": 0, "high": 2}}}, "sweep.tune.space.loss.params.gamma: also set by "
                                                              "sweep.grid; a key is either searched or swept"),
    ({"space": {"train.optimizer": {"low": 0, "high": 2}}}, "only numbers and integers can be searched"),
    ({"space": {"dataset.synthetic.num_train": {"low": 8, "high": 16}}}, "can be swept, not searched"),
    ({"space": {}}, "sweep.tune.space: must not be empty"),
    ({"space": SPACE, "samples": 0}, "sweep.tune.samples: must be >= 1"),
    ({"space": SPACE, "sample": 3}, "sweep.tune.sample: unknown key; did you mean 'samples'?"),
    ({"space": SPACE, "search": "grid"}, "sweep.tune.search"),
])
def test_malformed_tune_section_is_one_line_naming_the_key(tmp_path, tune, fragment):
    path = study_file(tmp_path, tune)
    with pytest.raises(StudyError) as e:
        load_study(path)
    assert fragment in str(e.value) and str(e.value).startswith(path) and "\n" not in str(e.value)


def test_tuning_sample_trains_on_train_minus_the_holdout_and_is_scored_on_it(tmp_path):
    study = load_study(study_file(tmp_path, {"space": SPACE, "samples": 4}))
    untuned = expand(study)
    label, overrides = variant_plans(study)[1]
    assert label == "gamma=2" and overrides == {"loss.params.gamma": 2}
    split = {"train_images": "/d/img", "train_annotations": "/d/rest.json", "holdout_annotations": "/d/held.json"}
    values = {"train.lr": 0.003, "train.warmup_iters": 2}
    t = tuning_trial(study, label, overrides, values, 3, split)
    assert t["trial_key"] == "gamma=2/sample=3" and t["variant"] == "gamma=2" and t["seed"] == 0
    assert t["train"]["lr"] == 0.003 and t["train"]["warmup_iters"] == 2 and t["loss"]["params"]["gamma"] == 2
    assert t["train"]["eval_every_epoch"] is True and t["speed_phase"] is True
    ds = t["dataset"]
    assert (ds["train_annotations"], ds["val_annotations"]) == ("/d/rest.json", "/d/held.json")
    assert ds["train_images"] == ds["val_images"] == "/d/img"
    assert t["tuning"] == {"sample": 3, "values": values}
    assert "/tuning/" in t["trial_dir"]
    # the holdout counts in the hash: the same config as a study trial is another trial
    same = [u for u in untuned if u["variant"] == "gamma=2" and u["seed"] == 0][0]
    assert t["config_hash"] != same["config_hash"]
    assert tuning_trial(study, label, overrides, values, 5, split)["config_hash"] == t["config_hash"]


class FakeStore:
    def __init__(self, records):
        self.records = records

    def trial_data(self, study, key):
        assert study == "smoke.tune" and key == "tuning"
        return self.records


def test_plan_finds_each_variants_finished_samples_and_takes_the_best(tmp_path):
    study = load_study(study_file(tmp_path, {"space": SPACE, "samples": 2}))
    untuned = expand(study)
    keys = [s.key for s in TuningPlan(study, FakeStore({}), untuned).searches]
    assert len(set(keys)) == 2  # a search per variant
    values = [{"train.lr": 1e-3 * (i + 1), "train.warmup_iters": i} for i in range(4)]
    records = {  # gamma=0: samples 0 and 1 tie at 0.4, the earlier wins; gamma=2: sample 1 (0.5 > 0.3)
        "gamma=0/sample=0": {"sample": 0, "values": values[0], "search": keys[0], "score": 0.4},
        "gamma=0/sample=1": {"sample": 1, "values": values[1], "search": keys[0], "score": 0.4},
        "gamma=2/sample=0": {"sample": 0, "values": values[2], "search": keys[1], "score": 0.3},
        "gamma=2/sample=1": {"sample": 1, "values": values[3], "search": keys[1], "score": 0.5},
        "gamma=2/sample=9": {"sample": 9, "values": values[0], "search": "another search", "score": 0.9},
    }
    plan = TuningPlan(study, FakeStore(records), untuned)
    assert plan.complete and plan.samples_done() == 4
    assert plan.choices() == {"gamma=0": {"sample": 0, "values": values[0], "score": 0.4, "samples": 2},
                              "gamma=2": {"sample": 1, "values": values[3], "score": 0.5, "samples": 2}}
    assert "2 variants x 2 samples" in plan.describe() and "4 of 4 samples done" in plan.describe()
    tuned = expand(study, plan.choices())
    g2 = [t for t in tuned if t["variant"] == "gamma=2"]
    assert [t["train"]["lr"] for t in g2] == [values[3]["train.lr"]] * 2 and g2[0]["tuned"]["sample"] == 1
    assert tuning_study("smoke") == "smoke.tune"
    # a changed search space is another search: nothing of the old one counts
    other = load_study(study_file(tmp_path, {"space": {"train.lr": SPACE["train.lr"]}, "samples": 2}))
    assert not TuningPlan(other, FakeStore(records), expand(other)).complete
    # more samples asked: the same search goes on
    more = load_study(study_file(tmp_path, {"space": SPACE, "samples": 3}))
    assert [s.key for s in TuningPlan(more, FakeStore(records), expand(more)).searches] == keys


def test_a_variant_with_no_scored_sample_cannot_be_tuned(tmp_path):
    study = load_study(study_file(tmp_path, {"space": SPACE, "samples": 1}))
    plan = TuningPlan(study, FakeStore({}), expand(study))
    with pytest.raises(TuningFailed, match="no sample of variant 'gamma=0' finished with a score"):
        plan.choices()


class FakeOptuna:
    """Stands in for Ray Tune's OptunaSearch: hands out fixed values, records what it is told."""

    def __init__(self, draws):
        self.draws, self.told, self.results = list(draws), {}, []

    def suggest(self, trial_id):
        return self.draws.pop(0) if self.draws else None

    def on_trial_result(self, trial_id, result):
        self.results.append((trial_id, result["val/AP"]))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = (result, error)


def test_searcher_numbers_samples_after_those_done_and_reports_the_last_score():
    inner = FakeOptuna([{"train.lr": 0.1}, {"train.lr": 0.2}])
    made = []
    searcher = SampleSearcher(inner, lambda values, i: made.append((values, i)) or {"k": i}, "val/AP", first=3)
    assert searcher.suggest("a") == {"trial": {"k": 3}} and searcher.suggest("b") == {"trial": {"k": 4}}
    assert made == [({"train.lr": 0.1}, 3), ({"train.lr": 0.2}, 4)]
    assert searcher.suggest("c") is None  # Optuna has nothing yet: Tune waits
    searcher.on_trial_result("a", {"val/AP": 0.2, "training_iteration": 1})
    searcher.on_trial_result("a", {"train/loss": 1.0, "training_iteration": 2})  # the final report: no score
    searcher.on_trial_complete("a", {"AP": 0.9})
    assert inner.told["a"] == ({"val/AP": 0.2}, False) and inner.results == [("a", 0.2)]
    # stopped by ASHA: Tune tells the searcher only at completion, with the stopping result
    searcher.on_trial_complete("b", {"val/AP": 0.05})
    assert inner.told["b"] == ({"val/AP": 0.05}, False)
    searcher.on_trial_complete("c", None, error=True)
    assert inner.told["c"] == (None, True)


def test_tuning_data_scores_a_sample_by_its_last_evaluated_epoch():
    trial = {"tuning": {"sample": 2, "values": {"train.lr": 0.01}, "search": "k", "max_epochs": 4}}
    rows = [{"step": 10, "val/AP": 0.1}, {"step": 20, "val/AP": 0.25}]  # stopped after 2 of 4 epochs
    assert tuning_data(trial, rows) == {"tuning": {"sample": 2, "values": {"train.lr": 0.01}, "search": "k",
                                                   "score": 0.25, "epochs": 2, "stopped_early": True}}
    assert tuning_data({"tuned": {"sample": 1}}, rows) == {"tuned": {"sample": 1}}
    assert tuning_data({}, rows) == {}
