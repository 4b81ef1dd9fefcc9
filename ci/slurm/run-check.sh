#!/usr/bin/env bash
# Run a tiny simulation study locally and through SLURM, and check the results are equal.
#
# Needs the cluster of ci/slurm/setup-single-node.sh (started here if it is not up yet) and
# snakemake-executor-plugin-slurm in the Python environment (`pip install -e ".[slurm]"`).
# The study (2 scenarios x 4 replicates of 300 patients, 2 replicates per job) runs once with
# `snakemake --cores 2` and once with `snakemake --profile profiles/slurm`, each in its own
# temporary directory; every chunk CSV and the summary CSV must be byte-identical, which holds
# because replicate seeds depend only on the study seed, the scenario and the replicate.
# The cluster is torn down at the end (pass --keep-cluster to leave it running).
#
# Environment: PYTHON (default: the repository's .venv, else python3), SLURM_CI_DIR (state
# directory of the cluster, shared with the setup and teardown scripts).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
STATE="${SLURM_CI_DIR:-/tmp/trial-analysis-slurm}"
KEEP_CLUSTER=0
[[ "${1:-}" == "--keep-cluster" ]] && KEEP_CLUSTER=1

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
# Jobs run `python -m trial_analysis`: the same interpreter must come first on PATH, on the
# submit side and (sbatch exports the environment) in the SLURM jobs.
PATH="$(dirname "$(command -v "$PYTHON")"):$PATH"
export PATH MPLBACKEND=Agg

WORK="$(mktemp -d "${TMPDIR:-/tmp}/slurm-check.XXXXXX")"
cleanup() {
    local status=$?
    if ((status != 0)); then
        echo "--- failed; SLURM job logs and rule logs follow" >&2
        find "$WORK" \( -path '*slurm_logs*' -o -path '*/logs/*' \) -name '*.log' -print0 2>/dev/null \
            | xargs -0 -r tail -n 30 >&2 || true
        [[ -d "$STATE/log" ]] && tail -n 30 "$STATE"/log/*.log >&2 || true
    fi
    ((KEEP_CLUSTER)) || "$HERE/teardown.sh"
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ ! -s "$STATE/run/slurmctld.pid" ]] || ! sinfo --noheader >/dev/null 2>&1; then
    "$HERE/setup-single-node.sh"
fi

# The study: the repository's config with a 300-patient cohort, and a two-scenario study file.
for run in local slurm; do
    mkdir -p "$WORK/$run/config"
    "$PYTHON" - "$REPO/config/config.yaml" "$WORK/$run/config" <<'EOF'
import sys
from pathlib import Path

import yaml

config = yaml.safe_load(Path(sys.argv[1]).read_text())
config["simulation"]["n_patients"] = 300
out = Path(sys.argv[2])
(out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
study = {
    "seed": 11,
    "outcomes": ["function"],
    "populations": ["complete_case", "all_available"],
    "chunk_size": 2,
    "defaults": {"n_replicates": 4, "n_patients": 300},
    "scenarios": [
        {"name": "default"},
        {"name": "null_effect", "effect": 0.0, "missingness": "MNAR"},
    ],
}
(out / "simulation_study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
EOF
done

snakemake=("$PYTHON" -m snakemake --snakefile "$REPO/Snakefile" --nolock)

start=$SECONDS
"${snakemake[@]}" --directory "$WORK/local" --cores 2 simulation_study
echo "local run: $((SECONDS - start)) s"

start=$SECONDS
# No accounting database here: no account to guess, and a short first status check (the
# plugin waits 40 s by default) keeps the run short; MinJobAge=600 leaves squeue room.
"${snakemake[@]}" --directory "$WORK/slurm" --profile "$REPO/profiles/slurm" \
    --slurm-no-account --slurm-init-seconds-before-status-checks 5 --retries 0 \
    --slurm-keep-successful-logs \
    --latency-wait 5 simulation_study
echo "SLURM run: $((SECONDS - start)) s"

# Every job must really have gone through SLURM: one sbatch log per chunk and the summary.
n_chunks="$(find "$WORK/local/reports/simulation_study" -name 'chunk_*.csv' | wc -l)"
n_slurm_logs="$(find "$WORK/slurm/.snakemake/slurm_logs" -name '*.log' 2>/dev/null | wc -l)"
echo "chunks: $n_chunks; SLURM job logs: $n_slurm_logs"
if ((n_chunks != 4 || n_slurm_logs != n_chunks + 1)); then
    echo "expected 4 chunk files and 5 SLURM jobs (4 chunks + summary)" >&2
    exit 1
fi

status=0
while IFS= read -r file; do
    relative="${file#"$WORK/local/"}"
    if ! cmp -s "$file" "$WORK/slurm/$relative"; then
        echo "DIFFERENT: $relative" >&2
        diff <(head -n 5 "$file") <(head -n 5 "$WORK/slurm/$relative") >&2 || true
        status=1
    fi
done < <(find "$WORK/local/reports/simulation_study" -name '*.csv' | sort)
if ((status != 0)); then
    echo "SLURM results differ from the local run" >&2
    exit 1
fi
echo "OK: summary.csv and all chunk CSVs are byte-identical between the local and the SLURM run"
