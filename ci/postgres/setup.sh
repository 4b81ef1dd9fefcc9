#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the postgres tests (as root): installs Debian postgresql
# if missing, starts a cluster with a fresh data directory under /tmp listening on 127.0.0.1
# only, loads the default simulated extract as text into schema `extract`, and writes the
# environment the tests need to $PG_ENV (default /tmp/trial-pg/env). No password: the cluster
# trusts local connections and lives only as long as the check (ci/postgres/teardown.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=${PG_ROOT:-/tmp/trial-pg}
PORT=${PG_PORT:-54329}
PYTHON=${PYTHON:-python}
if [ "$(id -u)" != 0 ]; then echo "ci/postgres/setup.sh must run as root" >&2; exit 1; fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
rm -rf "$ROOT"
mkdir -p "$ROOT/data" "$ROOT/socket" "$ROOT/extract"
chown -R postgres:postgres "$ROOT"
# The server runs as the postgres user (it refuses root).
su postgres -c "$BIN/initdb -D $ROOT/data -A trust -U postgres >$ROOT/initdb.log"
su postgres -c "$BIN/pg_ctl -D $ROOT/data -l $ROOT/server.log -w -o \"-h 127.0.0.1 -p $PORT -k $ROOT/socket\" start" >/dev/null
DSN="host=127.0.0.1 port=$PORT dbname=trial user=postgres"
psql -q -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "CREATE DATABASE trial" >/dev/null
# The default extract (its config's seed), loaded as the CSV text with a row number.
"$PYTHON" -m trial_analysis simulate --config config/config.yaml --out "$ROOT/extract" >/dev/null
chown -R postgres:postgres "$ROOT/extract"
psql -q -v ON_ERROR_STOP=1 "$DSN" -c "CREATE SCHEMA extract" >/dev/null
for table in therapists patients sessions outcomes; do
  header=$(head -1 "$ROOT/extract/$table.csv" | sed 's/^\xEF\xBB\xBF//; s/\r$//')
  columns=$(echo "$header" | tr ',' '\n' | sed 's/.*/"&" text/' | paste -sd, -)
  psql -q -v ON_ERROR_STOP=1 "$DSN" \
    -c "CREATE TABLE extract.$table ($columns, row_no bigint GENERATED ALWAYS AS IDENTITY)" \
    -c "\\copy extract.$table ($(echo "$header" | sed 's/[^,]*/"&"/g')) FROM '$ROOT/extract/$table.csv' WITH (FORMAT csv, HEADER true)" \
    >/dev/null
done
ENV_FILE=${PG_ENV:-$ROOT/env}
echo "export TRIAL_PG_DSN='$DSN'" > "$ENV_FILE"
echo "PostgreSQL $(basename "$(dirname "$BIN")") on 127.0.0.1:$PORT, data in $ROOT/data; env in $ENV_FILE"
