#!/usr/bin/env bash
# Tear the local cluster of up.sh down: cancel every job, kill what slurmstepd still runs, then stop
# slurmd, slurmctld, slurmdbd, mariadbd and munged (only if up.sh started it) by their pid files.
# Idempotent; keeps $DIFFODE_SLURM_DIR (the database, logs) unless given --purge.
set -uo pipefail
source "$(dirname "$0")/common.sh"
export PATH="$PATH:/usr/sbin:/sbin"

if alive "$SLURM_DIR/run/slurmctld.pid"; then
    jobs="$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
    if [[ -n "${jobs// }" ]]; then
        say "cancelling jobs: $jobs"
        scancel $jobs 2>/dev/null || true
        for i in $(seq 50); do [[ -z "$(squeue -h -o %A -t R,CG 2>/dev/null)" ]] && break; sleep 0.2; done
    fi
    # slurmstepd and the job's processes outlive slurmd: kill what is still listed
    pids="$(scontrol listpids 2>/dev/null | awk 'NR > 1 && $1 ~ /^[0-9]+$/ {print $1}' | sort -u)"
    for p in $pids; do kill -KILL "$p" 2>/dev/null || true; done
fi
stop slurmd "$SLURM_DIR/run/slurmd.pid"
for p in $(pgrep -x slurmstepd 2>/dev/null); do   # only steps of this cluster's spool
    grep -qa "$SLURM_DIR" "/proc/$p/cmdline" "/proc/$p/environ" 2>/dev/null && kill -KILL "$p" 2>/dev/null
done
stop slurmctld "$SLURM_DIR/run/slurmctld.pid"
stop slurmdbd "$SLURM_DIR/run/slurmdbd.pid"
stop mariadbd "$SLURM_DIR/run/mariadbd.pid"
stop munged "$SLURM_DIR/run/munged.pid"
if [[ "${1:-}" == --purge ]]; then rm -rf "$SLURM_DIR"; say "removed $SLURM_DIR"; fi
say "down"
