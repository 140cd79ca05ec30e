"""An installable package: the wheel builds without a setuptools warning, carries every tracked file of
diffode/ and the configs (conf/ as diffode.conf), and from another directory, with none of the optional
extras installed, runs the README's Python example and `diffode eval`, and names the extra a config needs."""
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]


def tracked_files() -> list[str]:
    return [f for f in subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                                      text=True, check=True).stdout.split() if (REPO / f).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the tracked tree")
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"
    # Build from the tracked files only (a clean copy), as a sdist/wheel from a fresh clone would.
    for f in tracked_files():
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, src / f)
    # -v shows setuptools' own output (-q hides its warnings); with bytecode writing off, distutils would
    # add a 'byte-compiling is disabled' warning of this environment, not of the package.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
                        "--disable-pip-version-check", str(src), "-w", str(out / "dist")],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = (out / "dist").glob("diffode-*.whl")
    return SimpleNamespace(wheel=whl, log=p.stdout + p.stderr)


def test_build_prints_no_setuptools_warning(built):
    warnings = [line.strip() for line in built.log.splitlines() if re.search("warn", line, re.I)]
    assert not warnings, f"{len(warnings)} warning line(s) building the wheel:\n" + "\n".join(warnings[:10])


def test_wheel_ships_every_tracked_file_of_the_package_and_the_configs(built):
    names = {n for n in zipfile.ZipFile(built.wheel).namelist() if ".dist-info/" not in n}
    want = {"diffode/conf/" + f[len("conf/"):] if f.startswith("conf/") else f
            for f in tracked_files() if f.startswith(("diffode/", "conf/"))}
    assert not sorted(want - names)[:10], "tracked but not in the wheel (a package missing from pyproject.toml's " \
                                          f"[tool.setuptools] packages?): {sorted(want - names)[:10]}"
    assert not sorted(names - want)[:10], f"in the wheel but not tracked: {sorted(names - want)[:10]}"
    assert "diffode/conf/solver/heun.yaml" in names and "diffode/assets/digits_unet.ckpt" in names


def extras_of(wheel) -> list[str]:
    """The distributions the wheel's metadata lists under an extra (every optional piece)."""
    meta = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist()
                                            if n.endswith(".dist-info/METADATA"))).decode()
    reqs = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.\-]+)[^;\n]*; extra == \"(\w+)\"", meta, re.M)
    return sorted({name for name, extra in reqs if not name.startswith("diffode")})


def dependencies_without(dists: list[str], farm: Path) -> Path:
    """A folder of links to this environment's installed packages, less the files of `dists` (a namespace
    folder such as hydra_plugins keeps the other packages' entries): an environment without those extras."""
    owned = set()
    for name in dists:
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        owned |= {Path(f).parts[:2] for f in files if Path(f).parts[0] != ".."}
    tops = {p[0] for p in owned}
    farm.mkdir()
    sites = [Path(p) for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    for site in sites:
        for entry in site.iterdir():
            if entry.name.startswith(("diffode", "__editable__")) or (farm / entry.name).exists():
                continue  # the wheel provides diffode; the first site dir on sys.path wins, as for Python
            if entry.name not in tops:
                (farm / entry.name).symlink_to(entry)
            elif entry.is_dir():
                keep = [c for c in entry.iterdir() if (entry.name, c.name) not in owned]
                if keep:
                    (farm / entry.name).mkdir()
                    for c in keep:
                        (farm / entry.name / c.name).symlink_to(c)
    return farm


def readme_python_example() -> str:
    text = (REPO / "README.md").read_text()
    return re.search(r"## Using it\s+```python\n(.*?)```", text, re.S).group(1)


def test_installed_wheel_runs_outside_the_repository_without_the_extras(built, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py, bindir = venv / "bin" / "python", venv / "bin"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    extras = extras_of(built.wheel)
    assert {"wandb", "tensorboard", "diffusers", "hydra-submitit-launcher"} <= set(extras)
    # The dependencies come from this environment (no downloads), less the extras; a plain path entry, so
    # the .pth files there (the editable install of the source tree) are not processed.
    Path(site, "deps.pth").write_text(str(dependencies_without(extras, tmp_path / "deps")) + "\n")
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(built.wheel)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DIFFODE_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}

    def run(cmd, **kw):
        return subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env, timeout=600, **kw)

    check = ("import importlib.metadata as m, diffode, diffode.config as c, diffode.extras as e\n"
             "assert not [x for x in e.EXTRAS if e.installed(x)], [x for x in e.EXTRAS if e.installed(x)]\n"
             "assert diffode.__version__ == m.version('diffode'), (diffode.__version__, m.version('diffode'))\n"
             "print(diffode.__file__, c.conf_root())\n")
    # then the README's example as written (its load_sampler("asset:...") works in any directory)
    r = run([str(py), "-c", check + readme_python_example() + "\nprint(sampler)\n"])
    assert r.returncode == 0, r.stderr[-3000:]
    where, summary, sampler = r.stdout.strip().splitlines()  # the likelihood's summary and the sampler: one line each
    assert "'bpd'" in summary, summary
    assert str(REPO) not in where, f"diffode was imported from the source tree: {where}"
    assert sampler.startswith("LearnedSampler(") and "ipndm/ld3" in sampler, sampler
    for script in ("diffode", "diffode-train", "diffode-eval"):
        assert (bindir / script).is_file(), f"console script {script} was not installed"
    args = ["source=gmm2d", "solver=heun", "grid=edm", "nfe=6", "n_samples=64", "batch_size=64", "save_images=0",
            "progress=false", "threads=1", "gmm_metrics.rtol=1e-6", "gmm_metrics.floor_repeats=1",
            "gmm_metrics.n_projections=16"]
    r = run([str(bindir / "diffode"), "eval", *args])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "heun/edm" in r.stdout
    assert list((work / "outputs" / "eval").glob("*/*/results.csv"))  # the run dir is under the launch directory
    # A config that needs a missing extra: one paragraph naming it, before any compute, no traceback.
    r = run([str(bindir / "diffode-eval"), *args, "logger=wandb"])
    assert r.returncode == 2 and "diffode[wandb]" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
