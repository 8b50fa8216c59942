"""Paths the driver computes from its own location (they moved once with the folders; a wrong one
breaks only a cluster run or the memo, far from here)."""
import os

from dashboards import fingerprint, paper
from platform.bench import REPO_ROOT as BENCH_ROOT
from platform.runner.orchestrate import REPO_ROOT
from platform.study import memo

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_driver_finds_the_repository_root():
    # orchestrate ships <root>/detectors to a cluster as a runtime_env py_module
    assert REPO_ROOT == BENCH_ROOT == ROOT
    assert os.path.isfile(os.path.join(REPO_ROOT, "detectors", "config.py"))


def test_the_memo_hashes_the_whole_driver_package():
    assert memo._PLATFORM == os.path.join(ROOT, "platform")


def test_page_code_and_paper_tables_are_found():
    assert fingerprint._DASHBOARDS == os.path.join(ROOT, "dashboards")
    assert os.path.isfile(os.path.join(paper.PAPER_DIR, "focal_loss.yaml"))
