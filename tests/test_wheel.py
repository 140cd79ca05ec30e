"""An installable package: the wheel carries the configs (diffode.conf) and the assets, and `diffode eval`
runs from a directory outside the repository with nothing of the source tree on the path."""
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the tracked tree")
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    # Build from the tracked files only (a clean copy), as a sdist/wheel from a fresh clone would.
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                        "-w", str(out / "dist")], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = (out / "dist").glob("diffode-*.whl")
    return whl


def test_wheel_ships_configs_and_assets(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("diffode/conf/train.yaml", "diffode/conf/eval.yaml", "diffode/conf/solver/heun.yaml",
              "diffode/conf/source/gmm2d.yaml", "diffode/conf/method/ld3.yaml", "diffode/assets/digits_unet.ckpt",
              "diffode/assets/artifacts/ld3/ipndm_nfe4/manifest.json", "diffode/cli/train.py"):
        assert f in names, f"{f} is not in the wheel"
    assert not [n for n in names if n.startswith(("tests/", "experiments/", "conf/"))]


def test_installed_wheel_runs_eval_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The dependencies come from this environment's site-packages (no downloads); its .pth files (the
    # editable install of the source tree) are NOT processed, so only the wheel provides diffode.
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=600)
    if p.returncode != 0:  # pip < 22.3 has no --python: install with the wheel's own target
        p = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)],
                           capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFODE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    where = subprocess.run([str(py), "-c", "import diffode, diffode.config as c; print(diffode.__file__); "
                            "print(c.conf_root())"], capture_output=True, text=True, cwd=work, env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    assert str(REPO) not in where.stdout, f"diffode was imported from the source tree: {where.stdout}"
    cmd = [str(py), "-m", "diffode.cli", "eval", "source=gmm2d", "solver=heun", "grid=edm", "nfe=6", "n_samples=64",
           "batch_size=64", "save_images=0", "progress=false", "threads=1", "gmm_metrics.rtol=1e-6",
           "gmm_metrics.floor_repeats=1", "gmm_metrics.n_projections=16"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "heun/edm" in r.stdout
    assert list((work / "outputs" / "eval").glob("*/*/results.csv"))  # the run dir is under the launch directory
