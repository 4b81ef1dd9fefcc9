#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (for CI; run as root).
#
# Installs slurm-wlm and munge with apt if they are missing, writes a minimal slurm.conf for
# one node named after `hostname -s` with this machine's CPUs and memory, starts munged,
# slurmctld and slurmd, and waits until `sinfo` shows the node idle.
#
# The configuration goes where every SLURM command looks for it, /etc/slurm/slurm.conf (the
# executor plugin's job steps drop SLURM_* variables, so SLURM_CONF would not reach them); the
# script refuses to overwrite a slurm.conf it did not write. Spool and state directories, logs
# and pid files live in $SLURM_CI_DIR (default /tmp/trial-analysis-slurm).
# ci/slurm/teardown.sh stops exactly the daemons started here (by their pid files) and removes
# what was written.
#
# No accounting database: Snakemake's SLURM executor must then be run with
# `--slurm-status-command squeue` (profiles/slurm/config.yaml) and MinJobAge here stays well
# above the plugin's status-check interval so finished jobs are still visible to squeue.
set -euo pipefail

STATE="${SLURM_CI_DIR:-/tmp/trial-analysis-slurm}"
WAIT_SECONDS="${SLURM_CI_WAIT:-60}"

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-single-node.sh: run as root (slurmd and munged need it)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# A cluster left running by an earlier call is stopped first, so the daemons always start
# from the configuration written below.
"$(dirname "${BASH_SOURCE[0]}")/teardown.sh"

node="$(hostname -s)"
# slurmd -C reports the node as slurmd itself sees it (CPUs, sockets, cores, memory); using
# its own numbers keeps the node from being drained for "low socket/core/thread count".
hardware="$(slurmd -C | head -n 1)"
cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")"
memory="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")"
topology="$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' \
    <<<"$hardware" || true)"
if [[ -z "$cpus" || -z "$memory" ]]; then
    echo "setup-single-node.sh: could not read CPUs/RealMemory from 'slurmd -C': $hardware" >&2
    exit 1
fi
# Leave some memory to the operating system: slurmd drains a node whose RealMemory is larger
# than what it finds at registration, and MemTotal can move by a few MB between reads.
memory=$((memory * 95 / 100))

CONF_DIR=/etc/slurm
MARKER="# Written by ci/slurm/setup-single-node.sh"
for file in slurm.conf cgroup.conf; do
    if [[ -e "$CONF_DIR/$file" ]] && ! grep -qxF "$MARKER" "$CONF_DIR/$file"; then
        echo "setup-single-node.sh: $CONF_DIR/$file exists and was not written by this script;" \
            "not overwriting a machine's own SLURM configuration" >&2
        exit 1
    fi
done

mkdir -p "$STATE"/{ctld,slurmd,log,run} "$CONF_DIR"
cat >"$CONF_DIR/slurm.conf" <<EOF
$MARKER
# One node, no accounting database; state, logs and pid files in $STATE.
ClusterName=trial-analysis-ci
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue is the status command: keep finished jobs listed long enough for the executor.
MinJobAge=600
SlurmctldPort=${SLURM_CI_CTLD_PORT:-6817}
SlurmdPort=${SLURM_CI_SLURMD_PORT:-6818}
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} ${topology} RealMemory=${memory} State=UNKNOWN
PartitionName=ci Nodes=${node} Default=YES MaxTime=INFINITE State=UP
EOF
# slurmd reads cgroup.conf even without cgroup plugins; this one only says none are used.
printf '%s\n%s\n' "$MARKER" "# No cgroup plugins: ProctrackType=proctrack/linuxproc, TaskPlugin=task/none." \
    >"$CONF_DIR/cgroup.conf"

# munge: reuse a running munged (a machine that already has one), else start our own.
if ! munge -n </dev/null >/dev/null 2>&1; then
    if [[ ! -s /etc/munge/munge.key ]]; then
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- munged
    cp /run/munge/munged.pid "$STATE/run/munged.pid"
    for _ in $(seq 20); do
        munge -n </dev/null >/dev/null 2>&1 && break
        sleep 0.5
    done
    munge -n </dev/null | unmunge >/dev/null
fi

# -c: start from a clean controller state, so that no node or job state of an earlier run
# (other CPUs, other memory, old job ids) is restored.
slurmctld -c
slurmd

deadline=$((SECONDS + WAIT_SECONDS))
state=""
until [[ "$state" == idle* ]]; do
    if ((SECONDS > deadline)); then
        echo "setup-single-node.sh: node ${node} not idle after ${WAIT_SECONDS}s (state: '${state}')" >&2
        tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
        exit 1
    fi
    sleep 1
    state="$(sinfo --noheader --nodes="$node" --format=%T 2>/dev/null | head -n 1 || true)"
done
sinfo
echo "single-node SLURM cluster up: node ${node}, ${cpus} CPUs, ${memory} MB"
