"""What users of Python / Lightning / Hydra packages expect of diffode: W&B's mode decided by wandb's own
settings, optional extras named when a config needs one, library code that logs instead of printing, no
private Lightning imports, shipped artifacts without the paths of the machine that made them, learned
samplers that print as one line and load by their shipped name, Hydra's shell completion."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "diffode"

# Each case: (environment, the mode a config requests, the mode expected). The .netrc of every case holds
# a key for wandb.example.org only: it counts where WANDB_BASE_URL names that server, not elsewhere.
KEY = "k" * 40
WANDB_CASES = [
    ({}, None, "offline"),
    ({"WANDB_API_KEY": KEY}, None, "online"),
    ({"WANDB_API_KEY": KEY, "WANDB_MODE": "offline"}, None, "offline"),
    ({"WANDB_API_KEY": KEY, "WANDB_MODE": "dryrun"}, None, "offline"),
    ({"WANDB_MODE": "disabled"}, None, "disabled"),
    ({"WANDB_API_KEY": KEY}, "offline", "offline"),
    ({"WANDB_BASE_URL": "https://wandb.example.org"}, None, "online"),
]


def test_wandb_mode_follows_wandb_settings_without_network(tmp_path):
    (tmp_path / ".netrc").write_text(f"machine wandb.example.org\n  login user\n  password {KEY}\n")
    (tmp_path / ".netrc").chmod(0o600)
    # One process for every case: wandb reads its environment once per session, so each case tears it down.
    script = f"""
import json, os, wandb
from diffode.evaluation.wandb_log import wandb_mode
out = []
for env, requested, _ in {WANDB_CASES!r}:
    for k in [k for k in os.environ if k.startswith("WANDB_") and k != "WANDB_SILENT"]:
        del os.environ[k]
    os.environ.update(env)
    wandb.teardown()
    out.append(wandb_mode(requested))
print(json.dumps(out))
"""
    # WANDB_SILENT: wandb would otherwise ask its server for the user name to greet (no network here)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true", WANDB_CONFIG_DIR=str(tmp_path / "config"))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == [want for *_, want in WANDB_CASES], list(zip(WANDB_CASES, got))
    assert not (tmp_path / "config").exists() or not any((tmp_path / "config").iterdir())  # nothing written
