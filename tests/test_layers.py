"""The architecture's arrows: diffode.core (the math) imports no Lightning, no Hydra and nothing of diffode
above core (docs/design.md, "Layers")."""
import json
import subprocess
import sys

IMPORT_ALL_CORE = """
import importlib, json, pkgutil, sys
import diffode.core
for m in pkgutil.walk_packages(diffode.core.__path__, "diffode.core."):
    importlib.import_module(m.name)
print(json.dumps(sorted(sys.modules)))
"""


def test_core_imports_nothing_above_it():
    out = subprocess.run([sys.executable, "-c", IMPORT_ALL_CORE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    mods = json.loads(out.stdout.strip().splitlines()[-1])
    assert "diffode.core.sample" in mods and "diffode.core.solvers.dpmpp" in mods  # it did import the math
    bad = [m for m in mods if m.split(".")[0] in ("lightning", "pytorch_lightning", "hydra", "omegaconf")]
    above = [m for m in mods if m.startswith("diffode.") and not m.startswith("diffode.core")]
    assert not bad, f"diffode.core imported {bad}"
    assert not above, f"diffode.core imported modules above it: {above}"
