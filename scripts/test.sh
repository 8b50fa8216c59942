#!/usr/bin/env bash
# The whole test suite from a fresh clone, after the README's install command
# (python -m pip install -e ".[test,cluster]" -c constraints.txt); .ci/run is exactly these two.
#
#   bash scripts/test.sh                   # everything: what CI runs
#   bash scripts/test.sh -m "not slow"     # the fast loop: no Ray, server, browser or DDP group
#   bash scripts/test.sh tests/detectors/test_boxes.py -x
#
# Arguments go to pytest as they are. The browser and PostgreSQL setups come first (each returns
# at once when its programs are there), except for `-m "not slow"`: the tests that need them are
# all slow, so the fast loop needs no root and no apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
previous=""
for arg in "$@"; do
    if [ "$previous" = "-m" ]; then
        case "$arg" in "not slow" | "not slow and "*) fast=1 ;; esac
    fi
    previous=$arg
done

if [ "$fast" = 0 ]; then
    echo "== test browser and PostgreSQL (scripts/setup_test_*.sh)"
    bash scripts/setup_test_browser.sh
    bash scripts/setup_test_postgres.sh
fi
echo "== lint (python -m ruff check .)"
python -m ruff check .
echo "== tests (python -m pytest -q $*)"
python -m pytest -q "$@"
