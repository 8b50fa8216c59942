"""The ``slow`` marker is on every test that starts a Ray cluster, a server, a browser, a DDP group or a
study, so ``python -m pytest -m "not slow"`` stays the fast loop.

Read from the test files' syntax trees, not by running them: a test "starts" something when its body,
a module-level helper it calls or a fixture it takes (from its module or a conftest.py above it) makes
one of the calls in CALLS, or runs a process whose arguments PROCESSES names. A test counts as marked
when its module sets ``pytestmark`` to the slow mark or the test carries ``@pytest.mark.slow``.
"""
import ast
import glob
import os

TESTS = os.path.dirname(os.path.abspath(__file__))

# A call spelt so starts what the value says. Dotted keys match only as written; bare names also
# match as the last part of a dotted call (webdriver.Chrome, dist.init_process_group, tune.Tuner).
CALLS = {
    "ray.init": "a local Ray",
    "Tuner": "Ray Tune",
    "tune.run": "Ray Tune",
    "TorchTrainer": "a Ray Train group",
    "run_study": "a study on Ray (platform.orchestrate)",
    "run_trials": "a study on Ray (platform.orchestrate)",
    "mp.spawn": "a DDP group",
    "init_process_group": "a DDP group",
    "Chrome": "a browser",
    "Driver": "a study through python -m platform.run (tests/platform/drills.py)",
    "RayNode": "a Ray node (tests/platform/drills.py)",
    "tracking_server.start": "PostgreSQL and an MLflow server (scripts/tracking_server.py)",
}
SUBPROCESS = {"run", "Popen", "call", "check_call", "check_output"}
# A subprocess whose string arguments include all of these starts what the value says.
PROCESSES = {
    ("-m", "platform.run"): "a study through python -m platform.run",
    ("start", "--head"): "a Ray head (ray start)",
    ("mlflow", "ui"): "an MLflow server",
    ("mlflow", "server"): "an MLflow server",
}
# Modules whose `python -m platform.run` processes all end before Ray starts, and why.
EXIT_BEFORE_RAY = {
    "test_cli.py": "--help, --dry-run and invalid study files",
    "test_mutations.py": "invalid study files (the test asserts ray is never imported)",
    "test_shim.py": "--help",
}


def _starts(node, module_name):
    """What the calls written directly in ``node`` (a function, nested functions included) start."""
    found = set()
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        name = ast.unparse(call.func)
        last = name.rsplit(".", 1)[-1]
        what = CALLS.get(name) or CALLS.get(last)  # (``last`` has no dot: only bare keys match it)
        if what:
            found.add(what)
        if name.startswith("subprocess.") and last in SUBPROCESS:
            args = {n.value for a in call.args for n in ast.walk(a)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            for needed, what in PROCESSES.items():
                if set(needed) <= args and not (needed == ("-m", "platform.run")
                                                and module_name in EXIT_BEFORE_RAY):
                    found.add(what)
    return found


def _read(path):
    with open(path) as f:
        return f.read()


def _functions(tree, path):
    """The module-level functions of ``tree`` (the file ``path``) by name: (node, file name)."""
    return {n.name: (n, os.path.basename(path)) for n in tree.body if isinstance(n, ast.FunctionDef)}


def unmarked(path, source=None):
    """[(test name, what it starts)] for the tests of ``path`` that start something but are not marked slow."""
    tree = ast.parse(source if source is not None else _read(path), path)
    known = {}  # fixtures of conftest.py files from the top down: the nearest wins, then the module's own
    directory, conftests = os.path.dirname(os.path.abspath(path)), []
    while directory.startswith(TESTS):
        conftests.insert(0, os.path.join(directory, "conftest.py"))
        directory = os.path.dirname(directory)
    for conftest in filter(os.path.exists, conftests):
        known.update(_functions(ast.parse(_read(conftest), conftest), conftest))
    known.update(_functions(tree, path))

    def reach(name, seen):
        """What function ``name`` starts itself or through the helpers it names and the fixtures it takes."""
        if name in seen or name not in known:
            return set()
        seen.add(name)
        node, where = known[name]
        found = _starts(node, where)
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        names |= {a.arg for a in node.args.args}
        for other in names:
            found |= reach(other, seen)
        return found

    def slow(expr):
        return "mark.slow" in ast.unparse(expr)

    module_slow = any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets)
                      and slow(n.value) for n in tree.body)
    out = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            what = reach(node.name, set())
            if what and not module_slow and not any(slow(d) for d in node.decorator_list):
                out.append((node.name, what))
    return out


def test_every_test_that_starts_a_cluster_server_browser_ddp_group_or_study_is_marked_slow():
    paths = sorted(glob.glob(os.path.join(TESTS, "**", "test_*.py"), recursive=True))
    assert len(paths) > 50  # the glob found the suite (54 files when this was written)
    missing = {os.path.relpath(p, TESTS): found for p in paths if (found := unmarked(p))}
    assert not missing, ("mark these @pytest.mark.slow (or the module: pytestmark = pytest.mark.slow): "
                         f"{missing}")


STUDY_TEST = '''import subprocess
import sys


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "platform.run", *args], capture_output=True)


def test_a_study_runs(tmp_path):
    assert run_cli(str(tmp_path / "study.yaml")).returncode == 0
'''

DDP_TEST = '''import pytest
import torch.multiprocessing as mp


@pytest.fixture
def runs():
    mp.spawn(print, nprocs=2)


def test_sharding():
    pass


def test_two_workers(runs):
    pass
'''


def test_the_check_finds_an_unmarked_study_a_ddp_fixture_and_accepts_the_marks():
    path = os.path.join(TESTS, "platform", "test_new.py")  # (not written: the source is given)
    study = "a study through python -m platform.run"
    assert unmarked(path, STUDY_TEST) == [("test_a_study_runs", {study})]
    assert unmarked(path, STUDY_TEST.replace("import sys\n", "import sys\n\nimport pytest\n\n"
                                             "pytestmark = pytest.mark.slow\n")) == []
    # a DDP group started by a fixture: only the test that takes it
    assert unmarked(path, DDP_TEST) == [("test_two_workers", {"a DDP group"})]
    assert unmarked(path, DDP_TEST.replace("def test_two_workers", "@pytest.mark.slow\ndef test_two_workers")) == []
    # the same study run from a module whose platform.run processes all exit before Ray: not a study
    assert unmarked(os.path.join(TESTS, "platform", "test_cli.py"), STUDY_TEST) == []
    # a helper from drills.py
    driver = "from drills import Driver\n\n\ndef test_drill(tmp_path):\n    Driver(str(tmp_path))\n"
    assert unmarked(path, driver) == [("test_drill", {CALLS["Driver"]})]
