#!/usr/bin/env bash
# One Hydra multirun job per solver (each job: that solver on its grid at every NFE), locally.
# Every job writes results.csv / report.md / rmse_vs_nfe.png under outputs/eval/multirun_<stamp>/<job num>/;
# with logger=wandb all jobs of the multirun share one W&B group (offline without credentials).
# Usage: bash experiments/sweeps/solvers_multirun.sh [extra overrides, e.g. logger=wandb]
set -euo pipefail
cd "$(dirname "$0")/../.."
DIFFODE=(diffode)
command -v diffode >/dev/null || DIFFODE=(python -m diffode.cli)   # venv not activated: the same entry
"${DIFFODE[@]}" eval -m experiment=eval_gmm \
  solver=euler,heun,dpmpp_2m,dpmpp_3m,unipc_bh2,ipndm \
  'sweep.nfes=[10,12,16,20]' n_samples=1000 "$@"
