#!/usr/bin/env bash
# The test command (README): installs what the suite needs (Ceph radosgw for a real S3
# server, the Python environment), checks lint and types, then runs the whole pytest suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ci-system-deps.sh
scripts/install.sh .venv >/dev/null
.venv/bin/ruff check detector pipelines jobs tests bench
.venv/bin/mypy
export RAY_AUTH_MODE=disabled MLFLOW_DISABLE_TELEMETRY=true RAY_USAGE_STATS_ENABLED=0
exec .venv/bin/python -m pytest -q -ra "$@"
