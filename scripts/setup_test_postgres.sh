#!/usr/bin/env bash
# PostgreSQL's server programs for the tracking-server tests (tests/platform/test_tracking_server.py)
# and scripts/tracking_server.py, from Debian's packages. The tests start their own server in a
# temporary directory: no cluster is created or started here. Idempotent; returns at once when
# initdb is there (on PATH or in /usr/lib/postgresql/<version>/bin).
#
#   bash scripts/setup_test_postgres.sh
set -euo pipefail

found() { command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }

if found; then
    echo "postgresql: $( (command -v initdb || ls /usr/lib/postgresql/*/bin/initdb) | tail -1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "setup_test_postgres: need root (or sudo) to apt-get install postgresql" >&2
        exit 1
    fi
fi

# Debian's package would create and start a "main" cluster; the tests need only the programs.
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/detbench.conf >/dev/null
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
echo "postgresql: $(ls /usr/lib/postgresql/*/bin/initdb | tail -1)"
