"""The benchmark command runs and prints its figures (no timing is asserted)."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow  # the benchmark command end to end in its own interpreter
def test_bench_prints_generation_train_and_latency_figures():
    proc = subprocess.run([sys.executable, "-m", "platform.bench.threads", "--threads", "1", "--steps", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"dataset generation .*: \d+\.\d s", proc.stdout)
    assert re.search(r"tiny threads=1: train \d+\.\d img/s .* p50 \d+\.\d ms, p95 \d+\.\d ms", proc.stdout)
