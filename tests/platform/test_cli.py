"""``python -m platform.run`` as a user runs it: from the repo root, in a fresh interpreter."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from platform.study.expand import expand
from platform.study.load import load_study
from platform.track.store import Store

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BASE = """\
name: cli
dataset: {kind: synthetic, synthetic: {num_train: 8, num_val: 4}}
detector: {name: retinanet}
loss: {name: focal}
"""

# (id, file text before the output section, key path, fragment of the message). Most of these fail
# before torch is imported (a fraction of a second each); the registry checks need it (~3 s each), so
# those are few here and exhaustive in test_spec.py.
MALFORMED = [
    ("yaml-syntax", "name: cli\n  oops: [\n", "line 2, column 7", "mapping values are not allowed here"),
    ("not-a-mapping", "[1, 2]\n", "", "top level must be a mapping"),
    ("missing-name", BASE.replace("name: cli\n", ""), "name", "required key is missing"),
    ("unknown-key", BASE + "trian: {epochs: 1}\n", "trian", "unknown key; did you mean 'train'?"),
    ("wrong-type", BASE + "train: {epochs: one}\n", "train.epochs", "expected an integer, got 'one'"),
    ("bad-choice", BASE + "train: {schedule: linear}\n", "train.schedule",
     "expected 'cosine', 'multistep' or 'constant', got 'linear'"),
    ("empty-seeds", BASE + "sweep: {seeds: []}\n", "sweep.seeds", "must not be empty"),
    ("coco-path", BASE.replace("kind: synthetic, synthetic: {num_train: 8, num_val: 4}",
                               "kind: coco, train_images: /no/imgs, train_annotations: /no/a.json, "
                               "val_images: /no/v, val_annotations: /no/v.json"),
     "dataset.train_images", "no such directory: /no/imgs"),
    ("unknown-detector", BASE.replace("{name: retinanet}", "{name: yolo9000}"), "detector.name",
     "unknown detector 'yolo9000' (known: "),
    ("unknown-loss-param", BASE.replace("{name: focal}", "{name: focal, params: {gama: 1}}"), "loss.params.gama",
     "unknown parameter of classification loss 'focal'; did you mean 'gamma'?"),
    ("grid-unknown-key", BASE + "sweep: {grid: {train.lrr: [0.1, 0.01]}}\n", "sweep.grid.train.lrr",
     "no such key in the study config; did you mean 'train.lr'?"),
    ("bad-combination", BASE + "sweep: {grid: {loss.name: [ce, focal], loss.params.gamma: [2]}}\n", "sweep",
     "trial 'name=ce,gamma=2': loss.params.gamma: unknown parameter of classification loss 'ce'"),
]


def run_cli(*args, timeout=120):
    """(exit code, stdout, stderr) of ``python -m platform.run ARGS`` started from the repo root."""
    proc = subprocess.run([sys.executable, "-m", "platform.run", *args], cwd=REPO_ROOT, text=True,
                          capture_output=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def malformed_runs(tmp_path_factory):
    """Every malformed file through the CLI, as many at a time as there are CPUs."""
    jobs = {}
    for case_id, text, _, _ in MALFORMED:
        d = tmp_path_factory.mktemp(case_id)
        if text.startswith("name: cli\ndataset"):  # outputs point into tmp: they must still not exist after
            text += f"output: {{runs_dir: {d}/runs, reports_dir: {d}/reports}}\n"
        (d / "study.yaml").write_text(text)
        jobs[case_id] = d
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        futures = {k: pool.submit(run_cli, str(d / "study.yaml")) for k, d in jobs.items()}
        return {k: (str(jobs[k] / "study.yaml"), jobs[k], *f.result()) for k, f in futures.items()}


def test_help():
    code, out, err = run_cli("--help")
    assert code == 0, err
    assert out.startswith("usage: python -m platform.run")
    for text in ("STUDY", "--address ADDR", "--dry-run", "--force", "--max-concurrent N", "exit codes"):
        assert text in out


@pytest.mark.parametrize("case_id,path_key,fragment", [(c[0], c[2], c[3]) for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
def test_malformed_study_exits_2_and_writes_nothing(malformed_runs, case_id, path_key, fragment):
    path, d, code, out, err = malformed_runs[case_id]
    assert code == 2, (out, err)
    assert out == ""
    (line,) = err.splitlines()  # one line, nothing else (no traceback)
    prefix = f"error: {path}: {path_key}: " if path_key else f"error: {path}: "
    assert line.startswith(prefix), line
    assert fragment in line, line
    assert not (d / "runs").exists() and not (d / "reports").exists()
    assert sorted(p.name for p in d.iterdir()) == ["study.yaml"]


def test_missing_file_and_bad_arguments_exit_2():
    code, out, err = run_cli("studies/does_not_exist.yaml")
    assert (code, out, err.strip()) == (2, "", "error: studies/does_not_exist.yaml: no such file or directory")
    code, _, err = run_cli("studies/smoke.yaml", "--max-concurrent", "0")
    assert code == 2 and "--max-concurrent: must be >= 1, got 0" in err


def test_dry_run_on_smoke_lists_two_trials_and_creates_nothing(tmp_path):
    # As a user types it, from the repo root: the listing.
    code, out, err = run_cli("studies/smoke.yaml", "--dry-run")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if "/seed=" in line]
    assert [r[0] for r in rows] == ["gamma=0/seed=0", "gamma=2/seed=0"]
    assert all(len(r[1]) == 12 for r in rows)
    assert "nothing was started or written" in out
    # The same study with its outputs in a fresh directory: nothing cached, nothing created.
    text = open(os.path.join(REPO_ROOT, "studies", "smoke.yaml")).read()
    study_file = tmp_path / "smoke.yaml"
    study_file.write_text(text + f"output: {{runs_dir: {tmp_path}/runs, reports_dir: {tmp_path}/reports}}\n")
    code, out, err = run_cli(str(study_file), "--dry-run")
    assert code == 0, err
    assert [line.split()[2] for line in out.splitlines() if "/seed=" in line] == ["no", "no"]
    assert "2 trials: 0 cached, 2 to run" in out
    assert sorted(os.listdir(tmp_path)) == ["smoke.yaml"]


def test_dry_run_reads_cached_trials_without_touching_the_store(tmp_path):
    text = open(os.path.join(REPO_ROOT, "studies", "smoke.yaml")).read()
    study_file = tmp_path / "smoke.yaml"
    study_file.write_text(text + f"output: {{runs_dir: {tmp_path}/runs, reports_dir: {tmp_path}/reports}}\n")
    # A store that says the gamma=2 trial finished in an earlier run.
    trials = expand(load_study(str(study_file)))
    store = Store(f"sqlite:///{tmp_path}/runs/results.db")
    store.upsert_study("smoke", "", {}, str(study_file))
    store.record_finished("smoke", trials[1], {"AP": 0.1}, [], {}, "run", None, None)
    store.close()
    db = tmp_path / "runs" / "results.db"
    before = db.read_bytes()
    # the store and the lock file its tables were created under (platform.track.locks)
    assert sorted(os.listdir(db.parent)) == ["results.db", "results.db.lock"]
    code, out, err = run_cli(str(study_file), "--dry-run", "--max-concurrent", "1")
    assert code == 0, err
    rows = [line.split() for line in out.splitlines() if "/seed=" in line]
    assert rows == [["gamma=0/seed=0", trials[0]["config_hash"][:12], "no"],
                    ["gamma=2/seed=0", trials[1]["config_hash"][:12], "yes"]]
    assert "2 trials: 1 cached, 1 to run" in out
    assert db.read_bytes() == before and sorted(os.listdir(db.parent)) == ["results.db", "results.db.lock"]
    assert not (tmp_path / "reports").exists()
