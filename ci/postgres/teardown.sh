#!/usr/bin/env bash
# Stop the throwaway cluster of ci/postgres/setup.sh and delete its folder.
set -uo pipefail
ROOT=${PG_ROOT:-/tmp/trial-pg}
BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -n "$BIN" ] && [ -f "$ROOT/data/postmaster.pid" ]; then
  su postgres -c "$BIN/pg_ctl -D $ROOT/data -m fast -w stop" >/dev/null || true
fi
rm -rf "$ROOT"
