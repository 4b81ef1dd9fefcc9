#!/usr/bin/env bash
# The postgres tests against the cluster of ci/postgres/setup.sh (which must have run).
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck disable=SC1090
source "${PG_ENV:-/tmp/trial-pg/env}"
python -m pytest -m postgres -p no:cacheprovider -q \
  tests/ingest/test_sources.py tests/test_sources_e2e.py
