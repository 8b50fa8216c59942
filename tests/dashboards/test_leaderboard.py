"""The cross-study leaderboard on reports/index.html (dashboards.leaderboard), from studies with hand-set APs."""
import copy
import re
from datetime import datetime, timedelta, timezone

import fakes
import pytest

from dashboards.leaderboard import budget_text, comparison_key, dataset_text, speed_label
from dashboards.overview import build_all_index

DIGEST = "d" * 64
T0 = datetime(2026, 2, 1, 12, 0, tzinfo=timezone.utc)
# study -> (epochs, {variant: (AP per seed 0, 1, 2, val AP curve over the epochs or None)})
# "beta" trains as "alpha" does (same data, epochs, batch): one ranking. "gamma" trains 6 epochs: its own group.
# beta's loss=b1 has the best AP but rose in a straight line to the last epoch (still improving): listed last.
STUDIES = {
    "alpha": (3, {"loss=a1": ((0.30, 0.32, 0.34), None), "loss=a2": ((0.20, 0.22, 0.24), None)}),
    "beta": (3, {"loss=b1": ((0.40, 0.41, 0.42), (1 / 3, 2 / 3, 1.0)), "loss=b2": ((0.25, 0.26, 0.27), None)}),
    "gamma": (6, {"loss=c1": ((0.50, 0.50, 0.50), None)}),
}


def config(study, variant, seed, epochs):
    trial = fakes.trial_dict(variant, 2.0, 0.25, seed, "/data/annotations/instances_val.json")
    trial.update(study=study, config_hash=f"{study}-{variant}-{seed}")
    trial["dataset"]["digest"] = DIGEST
    trial["train"] = dict(trial["train"], epochs=epochs)
    return trial


@pytest.fixture
def store(tmp_path):
    from platform.track.store import Store

    store = Store(f"sqlite:///{tmp_path}/results.db")
    for study, (epochs, variants) in STUDIES.items():
        store.upsert_study(study, f"{study} study", {"name": study}, None)
        for n, (variant, (aps, curve)) in enumerate(variants.items()):
            for seed, ap in enumerate(aps):
                trial = config(study, variant, seed, epochs)
                rows = [{"step": e + 1, "epoch": e, "val/AP": ap * c} for e, c in enumerate(curve or ())]
                start = T0 + timedelta(minutes=10 * n + seed)
                store.record_finished(study, trial, {"AP": ap, "AP50": ap + 0.2, "speed/latency_ms_p50": 4.0 + n},
                                      rows, {}, None, start, start + timedelta(seconds=60))
    # alpha's speed was measured alone after training: one figure for both its variants
    hashes = [f"alpha-{v}-{s}" for v in STUDIES["alpha"][1] for s in range(3)]
    store.record_speed("alpha", "s" * 64, {"key": {"detector": "retinanet", "scale": "tiny", "threads": 2,
                                                   "device": "cpu", "precision": "fp32"},
                                           "figures": {"latency_ms_p50": 7.5}, "hardware": {"cpu": "Test CPU 9000"},
                                           "method": {}, "trial_hash": hashes[0]},
                       hashes, {"speed/latency_ms_p50": 7.5})
    yield store
    store.close()


def build(store, tmp_path, pages=("alpha", "beta")):
    reports = tmp_path / "reports"
    for study in pages:  # the study pages built so far; gamma's is not
        (reports / study).mkdir(parents=True)
        (reports / study / "index.html").write_text("")
    build_all_index(store, str(reports), "now")
    return (reports / "index.html").read_text()


def leaderboard_rows(text):
    """[(dataset heading, budget heading, [(rank, study cell, variant, AP cell, convergence cell), ...]), ...]"""
    board = text.split('<h2 id="leaderboard">', 1)[1]
    out = []
    for section in board.split("<h3>")[1:]:
        data = section.split("</h3>", 1)[0]
        for group in section.split("<h4>")[1:]:
            rows = []
            for tr in re.findall(r"<tr>(.*?)</tr>", group.split("<tbody>", 1)[1]):
                cells = re.findall(r"<td[^>]*>(.*?)</td>", tr)
                rows.append((cells[0], cells[1], cells[2], cells[4], cells[-1]))
            out.append((data, group.split("</h4>", 1)[0], rows))
    return out


def test_same_data_and_budget_share_one_ranking_best_mean_first(store, tmp_path):
    text = build(store, tmp_path)
    groups = leaderboard_rows(text)
    assert [g[1] for g in groups] == ["tiny scale, 3 epochs, batch 8, no step cap, random backbone, untuned",
                                      "tiny scale, 6 epochs, batch 8, no step cap, random backbone, untuned"]
    data = "synthetic: 64 train / 30 val images, 128 px, 3 classes (generator seed 0); data sha256 dddddddddddd"
    assert [g[0] for g in groups] == [data, data]
    assert text.count("<h3>") == 1  # one dataset, one heading over both budgets
    assert "4 variants from 2 studies, ranked together" in text and "1 variant from 1 study" in text
    ranked = [(r[0], r[2]) for r in groups[0][2]]
    # means 0.32 (a1) > 0.26 (b2) > 0.22 (a2); b1's 0.41 is still improving: after them, unranked
    assert ranked == [("1", "loss=a1"), ("2", "loss=b2"), ("3", "loss=a2"), ('<span class="na">–</span>', "loss=b1")]
    assert "still improving in 3 of 3 seeds" in groups[0][2][3][4] and groups[0][2][0][4] == ""
    assert [(r[0], r[2]) for r in groups[1][2]] == [("1", "loss=c1")]


def test_ap_interval_text(store, tmp_path):
    rows = {r[2]: r[3] for g in leaderboard_rows(build(store, tmp_path)) for r in g[2]}
    # a1: mean 0.32, sd 0.02, half = t(0.975, 2) * 0.02 / sqrt(3) = 4.3027 * 0.011547 = 0.0497
    assert rows["loss=a1"] == '0.320 <span class="note">± 0.050</span>'
    # b2: mean 0.26, sd 0.01, half = 4.3027 * 0.01 / sqrt(3) = 0.0248
    assert rows["loss=b2"] == '0.260 <span class="note">± 0.025</span>'
    assert rows["loss=c1"] == "0.500"  # three equal seeds: no interval to show


def test_links_point_to_each_study_page(store, tmp_path):
    groups = leaderboard_rows(build(store, tmp_path))
    study = {r[2]: r[1] for g in groups for r in g[2]}
    assert study["loss=a1"] == study["loss=a2"] == '<a href="alpha/index.html">alpha</a>'
    assert study["loss=b1"] == '<a href="beta/index.html">beta</a>'
    assert study["loss=c1"] == "gamma"  # no page built yet: no link to a missing file


def test_latency_with_its_speed_configuration(store, tmp_path):
    text = build(store, tmp_path)
    board = text.split('<h2 id="leaderboard">', 1)[1]
    a1 = re.search(r"<tr>(?:(?!</tr>).)*loss=a1.*?</tr>", board).group(0)
    assert "7.5" in a1 and "tiny, 2 threads, cpu, fp32; alone on Test CPU 9000" in a1
    b2 = re.search(r"<tr>(?:(?!</tr>).)*loss=b2.*?</tr>", board).group(0)
    assert "5.0" in b2 and "tiny, 1 thread, cpu, fp32; in the trial, beside others" in b2
    assert "compare two latencies only when their speed configurations read the same" in board


def test_comparison_key_splits_on_data_and_budget_only():
    base = config("s", "v", 0, 3)
    key = comparison_key(base)
    assert key == (DIGEST, "tiny", 3, 8, None, "random", 0)
    other_lr = copy.deepcopy(base)
    other_lr["train"]["lr"] = 0.01
    other_lr["loss"]["params"]["gamma"] = 0.0
    assert comparison_key(other_lr) == key  # what the rows compare, not the budget
    phased = copy.deepcopy(base)
    phased["train"]["phases"] = [{"name": "a", "epochs": 1}, {"name": "b", "epochs": 2}]
    assert comparison_key(phased) == key  # 1 + 2 = 3 epochs, as one phase of 3
    changes = [("dataset", "digest", "e" * 64), ("train", "batch_size", 16), ("train", "max_steps", 100),
               ("detector", "scale", "paper")]
    for part, name, value in changes:
        changed = copy.deepcopy(base)
        changed[part][name] = value
        assert comparison_key(changed) != key, name
    pretrained = copy.deepcopy(base)
    pretrained["detector"]["backbone"] = {"weights": "pretrain"}
    pretrained["backbone_digest"] = "f" * 64
    assert comparison_key(pretrained)[-2] == "f" * 64
    tuned = copy.deepcopy(base)  # the same variant after 8 samples of sweep.tune: more compute, its own ranking
    tuned["tuned"] = {"sample": 3, "values": {"train.lr": 0.004}, "score": 0.3, "samples": 8}
    assert comparison_key(tuned)[-1] == 8 and comparison_key(tuned)[:-1] == key[:-1]
    del tuned["tuned"]["samples"]  # stored before the sample count was kept: tuned all the same
    assert comparison_key(tuned)[-1] == "?" and budget_text(comparison_key(tuned)).endswith(", tuned")


def test_dataset_and_speed_text():
    coco = {"kind": "coco", "train_annotations": "/data/ann/instances_train2017.json",
            "val_annotations": "/data/ann/instances_val2017.json"}
    assert dataset_text(coco) == "COCO: train instances_train2017.json, val instances_val2017.json; no data digest"
    cfg = {"detector": {"scale": "paper"}, "num_threads": 4, "gpus": 1, "train": {"precision": "bf16"}}
    assert speed_label(cfg, None, False) == "paper, 4 threads, cuda, bf16; in the trial, beside others"
