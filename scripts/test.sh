#!/usr/bin/env bash
# `make test`: the system packages the tests run for real, a private single-node Slurm, ruff, pytest.
# Every daemon started here or by the tests (Slurm and MUNGE, a Docker engine and its containerd) is
# stopped when this script ends, whatever the outcome (exit trap). Nothing of the machine's own Slurm,
# MUNGE or Docker is changed: they are configured and kept in a directory of their own.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
daemons=$(mktemp -d /tmp/nodepilot-test-XXXXXX)
export NODEPILOT_TEST_DAEMONS=$daemons  # where tests/docker keeps its engine's pid file (stopped below)

cleanup() {
    sh tests/hpc/slurm-single-node.sh stop "$daemons/slurm" || true
    bash scripts/docker-engine.sh stop "$daemons/docker" || true
    rm -rf "$daemons"
}
trap cleanup EXIT
trap 'exit 130' INT TERM  # through the EXIT trap

bash scripts/system-deps.sh || exit 1
# tests/hpc/test_slurm.py finds this cluster through SLURM_CONF (it skips its srun test without one)
if out=$(timeout 400 sh tests/hpc/slurm-single-node.sh start "$daemons/slurm" 2>&1); then
    export "$(printf '%s\n' "$out" | grep '^SLURM_CONF=' | tail -1)"
else
    echo "no single-node Slurm here ($(printf '%s' "$out" | tail -1)): the srun test will skip"
fi
"$BIN/ruff" check . || exit 1
"$BIN/pytest" -q "$@"
