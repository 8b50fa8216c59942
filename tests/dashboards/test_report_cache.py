"""A cached re-run does no page work: pages are rebuilt only when their data changed, and the image
bootstrap is read back when the trials it came from are the same."""
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

import fakes
from dashboards import pages
from dashboards.analysis import Analysis
from dashboards.data import load_study
from dashboards.fingerprint import PAGES, fingerprint, is_current, mark_current
from platform.track.store import Store
from platform.runner.summary import write_report


@pytest.fixture
def store(fake_reports, tmp_path):
    """A copy of the fake study's store, free to change."""
    shutil.copy(fake_reports["root"] / "results.db", tmp_path / "results.db")
    s = Store(f"sqlite:///{tmp_path}/results.db")
    yield s
    s.close()


def test_the_built_pages_record_their_data(fake_reports):
    # the session's pages were built with 100 resamples from the unchanged store
    assert is_current(str(fake_reports["reports"]), fakes.STUDY,
                      fingerprint(fake_reports["store"], fakes.STUDY, resamples=100))
    assert not is_current(str(fake_reports["reports"]), fakes.STUDY, "another fingerprint")


def test_write_report_skips_unchanged_data_and_rebuilds_changed(store, tmp_path, monkeypatch, capsys):
    built = []
    monkeypatch.setattr(pages, "build_reports", lambda s, name, reports_dir: built.append(name) or "index.html")
    reports = tmp_path / "reports"
    study = SimpleNamespace(name=fakes.STUDY, output=SimpleNamespace(reports_dir=str(reports)), source="f.yaml")
    for page in PAGES:  # pages as a build left them, with the fingerprint of the current data
        (reports / fakes.STUDY).mkdir(parents=True, exist_ok=True)
        (reports / fakes.STUDY / page).write_text("built")
    (reports / "index.html").write_text("built")
    mark_current(str(reports), fakes.STUDY, fingerprint(store, fakes.STUDY))

    assert write_report(store, study) == str(reports / fakes.STUDY / "index.html")
    assert built == [] and "up to date" in capsys.readouterr().out
    # a trial that failed since is new data: the pages are built again
    trial = dict(store.trials(fakes.STUDY)[0]["config"], trial_key="new/seed=9", config_hash="9" * 64, seed=9)
    store.record_failed(fakes.STUDY, trial, "boom", None, 1)
    write_report(store, study)
    assert built == [fakes.STUDY]
    # platform.report's explicit rebuild does not ask
    write_report(store, study, only_if_changed=False)
    assert len(built) == 2


def test_bootstrap_is_read_back_for_the_same_trials_only(store, tmp_path):
    cache = str(tmp_path / "boot.json")
    first = Analysis(load_study(store, fakes.STUDY), resamples=5, cache_path=cache)
    boot = first.bootstrap()
    assert boot is not None and not first.boot_cached
    second = Analysis(load_study(store, fakes.STUDY), resamples=5, cache_path=cache)
    again = second.bootstrap()
    assert second.boot_cached
    assert all(np.array_equal(boot[v], again[v], equal_nan=True) for v in boot)
    # the seeds' per-image AP (the probability of improvement's tasks) comes back with it, [3 seeds, 30 images]
    per, per_again = first.per_image_ap(), second.per_image_ap()
    assert all(per[v].shape == (3, 30) and np.array_equal(per[v], per_again[v], equal_nan=True) for v in per)
    # other resamples, or a trial finished again (a new finish time), are other data
    other = Analysis(load_study(store, fakes.STUDY), resamples=6, cache_path=cache)
    assert other.bootstrap() is not None and not other.boot_cached
    Analysis(load_study(store, fakes.STUDY), resamples=5, cache_path=cache).bootstrap()  # back to 5 in the file
    t = next(t for t in store.trials(fakes.STUDY) if t["status"] == "finished")
    finals = {r["name"]: r["value"] for r in store.final_metrics(fakes.STUDY) if r["trial_key"] == t["trial_key"]}
    data = {k: v for k, v in ((k, store.trial_data(fakes.STUDY, k).get(t["trial_key"]))
                              for k in ("detections", "val_ground_truth")) if v is not None}
    gt = store.ground_truth(data.pop("val_ground_truth"))
    store.record_finished(fakes.STUDY, t["config"], finals, [], data, None, 0.0, 2e9, val_ground_truth=gt)
    third = Analysis(load_study(store, fakes.STUDY), resamples=5, cache_path=cache)
    third.bootstrap()
    assert not third.boot_cached
