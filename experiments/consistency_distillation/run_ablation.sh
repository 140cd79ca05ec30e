#!/usr/bin/env bash
# The CD ablation on the digits UNet: one setting changed at a time from experiment=cd_digits (N 18, mu 0, l2),
# all at the same budget of 300 updates (batch 128). The baseline is the main run's EMA snapshot at step 300
# (same config and seed, so the same trajectory). Run dirs go to $DIFFODE_OUTPUTS/cd_ablation/.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-300}
for ov in "method.N=10" "method.N=40" "method.mu=0.9" "method.mu=0.95" "method.distance=pseudo_huber"; do
  name=$(echo "$ov" | sed 's/method\.//; s/=/_/')
  OMP_NUM_THREADS=1 nice -n 10 .venv/bin/diffode train experiment=cd_digits task_name=cd_ablation \
    output_dir="${DIFFODE_OUTPUTS:-outputs}/cd_ablation/$name" trainer.max_steps=$STEPS method.snapshot_every=0 \
    trainer.enable_progress_bar=false method.sample_steps=[1,2] "$ov"
done
