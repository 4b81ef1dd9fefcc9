#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by ci/slurm/setup-single-node.sh.
#
# Stops only the daemons whose pid files that script wrote (slurmd, slurmctld and, if it
# started one, munged), waits for them to exit, and removes the state directory and the
# configuration files it wrote.
set -uo pipefail

STATE="${SLURM_CI_DIR:-/tmp/trial-analysis-slurm}"
[[ -d "$STATE/run" ]] || exit 0

for daemon in slurmd slurmctld munged; do
    pidfile="$STATE/run/$daemon.pid"
    [[ -s "$pidfile" ]] || continue
    pid="$(cat "$pidfile")"
    # The pid must still belong to that daemon: never signal a recycled pid.
    if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$daemon" ]]; then
        kill -TERM "$pid"
        for _ in $(seq 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "teardown.sh: $daemon ($pid) ignored SIGTERM; sending SIGKILL" >&2
            kill -KILL "$pid"
        fi
    fi
    rm -f "$pidfile"
done
MARKER="# Written by ci/slurm/setup-single-node.sh"
for file in /etc/slurm/slurm.conf /etc/slurm/cgroup.conf; do
    if [[ -e "$file" ]] && grep -qxF "$MARKER" "$file"; then
        rm -f "$file"
    fi
done
rm -rf "$STATE"
echo "single-node SLURM cluster stopped"
