"""Derived caches heal themselves: a truncated, empty, wrong-version, wrong-key or pickled entry in each
cache is ONE warning naming the file, moved aside and recomputed; atomic writes keep the previous file on
a full disk; two processes computing one entry agree; the one hashing helper keeps every key's value;
and no code of the package loads a pickle from disk."""
import ast
import hashlib
import json
import logging
import multiprocessing as mp
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from diffode import cache as C

PACKAGE = Path(C.__file__).parent


# -- the caches, each as: run(tmp_path) -> (tensor result, entry path); calls counts the computes ----------

class Counted:
    def __init__(self):
        self.calls = 0


class FidStats(Counted):
    def run(self, tmp_path):
        from diffode.metrics.fid import FlattenFeatures, reference_stats

        def real():
            self.calls += 1
            return torch.linspace(-1, 1, 60).reshape(10, 6)

        out = reference_stats("toy", FlattenFeatures(6), real, directory=tmp_path)
        return out["real_features_cov_sum"], Path(out["path"])


class ReferenceSolves(Counted):
    def run(self, tmp_path):
        from diffode.evaluation.metrics import ReferenceSolve
        from diffode.models import initial_noise, load_model

        model = load_model({"kind": "gmm", "preset": "gmm2d"})
        exact = model.denoiser
        first = []

        def D(x, s):
            if not first:
                first.append(1)
                self.calls += 1
            return exact(x, s)

        model.denoiser = D
        spec = OmegaConf.create({"solver": "dpmpp_3m", "grid": "logsnr", "nfe": 8, "check_nfe": 4,
                                 "cache_dir": str(tmp_path)})
        ref = ReferenceSolve(model, initial_noise(model.shape, range(4), model.sigma_max), 0, spec, 4)
        return ref.x_ref, ref.path


class TeacherPairs(Counted):
    def run(self, tmp_path):
        from diffode.methods.ld3.teacher import cached_pairs

        def make():
            self.calls += 1
            return torch.arange(6.0).reshape(3, 2), torch.ones(3, 2)

        z, x0, path = cached_pairs(tmp_path, {"teacher": "toy", "n": 3}, make)
        return torch.cat([z, x0]), path


class WeightsCheck(Counted):
    """The cached sha256 check of a downloaded weights file (a fake file here, in a fake hub cache)."""

    def run(self, tmp_path):
        from diffode.metrics import weights as W

        f = tmp_path / "hub" / "w.pth"
        if not f.exists():
            f.parent.mkdir(parents=True)
            f.write_bytes(b"weights")
        real = C.digest
        def counting(*parts, **kw):
            self.calls += isinstance(parts[0], Path)  # hashing the file, not a key
            return real(*parts, **kw)

        C.digest = counting
        try:
            sha = W.file_check(f)
        finally:
            C.digest = real
        entry = next((tmp_path / "cache" / "weights_checks").glob("w.pth.*.pt"))
        return torch.tensor(list(bytes.fromhex(sha))), entry


class DigitsClassifier(Counted):
    """The first-use cache of the digits classifier (when the shipped asset is missing); training is faked."""

    def run(self, tmp_path):
        from diffode.metrics import digits_classifier as dc

        def train(**kw):
            self.calls += 1
            torch.manual_seed(0)
            return dc.DigitsCNN(4), {"train_config": {"width": 4}, "heldout_accuracy": 0.5}

        saved = dc._asset, dc.train_classifier
        dc._asset, dc.train_classifier = (lambda name: tmp_path / "no_asset.pt"), train
        dc.load_classifier.cache_clear()
        try:
            model, info = dc.load_classifier("perceptual")
        finally:
            dc._asset, dc.train_classifier = saved
            dc.load_classifier.cache_clear()
        return model.head.weight.detach(), Path(info["path"])


CACHES = [FidStats, ReferenceSolves, TeacherPairs, WeightsCheck, DigitsClassifier]


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFODE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


class Payload:
    """Unpickling it creates a file: the proof that code from the cache folder ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _damage(kind: str, path: Path):
    good = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "wrong_version":
        blob = torch.load(path, weights_only=True)
        torch.save({**blob, "version": blob["version"] + 1}, path)
    elif kind == "wrong_key":
        blob = torch.load(path, weights_only=True)
        torch.save({**blob, "key": json.dumps({"another": "spec"})}, path)
    elif kind == "pickle":  # whoever can write the cache folder must not run code in the next job
        torch.save({"format": C.FORMAT, "data": Payload(path.parent / "pwned")}, path)
    elif kind == "old_format":  # an entry written before entries carried their key and version
        torch.save({"x": torch.zeros(2)}, path)


@pytest.mark.parametrize("kind", ["truncated", "empty", "wrong_version", "wrong_key", "pickle", "old_format"])
@pytest.mark.parametrize("Cache", CACHES, ids=lambda c: c.__name__)
def test_a_bad_entry_is_one_warning_moved_aside_and_recomputed(Cache, kind, cache_env, caplog):
    c = Cache()
    first, path = c.run(cache_env)
    again, _ = c.run(cache_env)
    assert c.calls == 1 and torch.equal(first, again)  # the second run read the entry
    _damage(kind, path)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        healed, path2 = c.run(cache_env)
    assert path2 == path and c.calls == 2 and torch.equal(healed, first)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    assert "\n" not in warnings[0].getMessage()
    assert (path.parent / (path.name + ".bad")).is_file() and not (path.parent / "pwned").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        c.run(cache_env)  # healed: read, no warning
    assert c.calls == 2 and not caplog.records


OLD_FID_KEYS = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")


def _old_reader(path: Path) -> dict:
    """What a diffode of the first cache format did with a FID statistics file (its stats_path had no tag)."""
    stats = torch.load(path, map_location="cpu", weights_only=True)
    return {k: stats[k] for k in OLD_FID_KEYS}  # a new-format file here was `KeyError: real_features_num_samples`


@pytest.mark.parametrize("Cache", CACHES, ids=lambda c: c.__name__)
def test_an_entry_file_is_named_by_its_format_and_version(Cache, cache_env):
    _, path = Cache().run(cache_env)
    assert path.name.endswith(".cache2-v1.pt") and path.is_file()
    untagged = path.with_name(path.name.replace(".cache2-v1", ""))
    assert not untagged.exists()  # where a diffode of the first format looks: nothing of ours there


def test_old_and_new_fid_statistics_live_side_by_side(cache_env, caplog):
    """An older diffode and this one share a cache folder: each reads only its own file, neither warns."""
    from diffode.metrics.fid import stats_path

    new = stats_path("toy", "flatten6", cache_env)
    old = new.with_name(new.name.replace(".cache2-v1", ""))
    old_stats = {k: torch.full((2,), 7.0) for k in OLD_FID_KEYS}
    torch.save(old_stats, old)
    c = FidStats()
    with caplog.at_level(logging.WARNING):
        _, path = c.run(cache_env)
    assert path == new and c.calls == 1 and not caplog.records  # computed its own; the old file not even opened
    assert old.read_bytes() and torch.equal(_old_reader(old)["real_features_num_samples"], torch.full((2,), 7.0))
    with pytest.raises(KeyError):
        _old_reader(new)  # why the names differ
    assert not list(cache_env.glob("*.bad"))


def test_a_cache_entry_without_its_tag_is_refused(tmp_path):
    with pytest.raises(ValueError, match="entry_file"):
        C.load_or_compute(tmp_path / "x.pt", {"k": 1}, lambda: {"x": torch.zeros(1)}, version=1)
    with pytest.raises(ValueError, match="entry_file"):  # another version's name is not this version's
        C.load_or_compute(C.entry_file(tmp_path / "x.pt", 2), {"k": 1}, lambda: {"x": torch.zeros(1)}, version=1)


def test_a_damaged_fid_entry_does_not_count_as_cached_at_config_time(cache_env):
    """check_metrics skips the real-data check when the statistics are cached: a damaged entry is not."""
    from diffode.metrics.fid import has_stats

    _, path = FidStats().run(cache_env)
    assert has_stats("toy", "flatten6", cache_env)
    _damage("truncated", path)
    assert not has_stats("toy", "flatten6", cache_env) and path.is_file()  # asking sets nothing aside


def test_damaged_weights_file_is_refused_in_one_paragraph_and_moved_aside(cache_env, monkeypatch):
    from diffode.metrics import weights as W

    content = b"not the weights"
    good = hashlib.sha256(content).hexdigest()[:8]
    monkeypatch.setitem(W.WEIGHTS, "toy", (f"toy-{good}.pth", "https://example.invalid/toy.pth"))
    path = W.weights_path("toy")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert W.require_weights("toy") == path
    path.write_bytes(content[:5])  # a partial copy
    with pytest.raises(W.MissingWeightsError) as e:
        W.require_weights("toy")
    msg = str(e.value)
    assert str(path) in msg and "diffode fetch-weights toy" in msg and "\n" not in msg
    assert not path.exists() and (path.parent / (path.name + ".bad")).is_file()


# -- atomic writes ------------------------------------------------------------------------------------

def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "results.csv"
    C.write_text(target, "old")

    class DiskFull(OSError):
        pass

    with pytest.raises(OSError):
        with C.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise DiskFull(28, "No space left on device")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_temps_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    target = tmp_path / "a.pt"
    p = mp.get_context("spawn").Process(target=os._exit, args=(0,))
    p.start()
    p.join()
    dead = tmp_path / f".a.pt.{C.HOST}.{p.pid}.tmp"
    live = tmp_path / f".a.pt.{C.HOST}.{os.getppid()}.tmp"
    other_host = tmp_path / f".a.pt.elsewhere.{p.pid}.tmp"
    for f in (dead, live, other_host):
        f.write_text("x")
    C.save({"x": 1}, target)
    assert not dead.exists() and live.exists() and other_host.exists()
    sub = tmp_path / "sub"
    sub.mkdir()
    stale = sub / f".b.{C.HOST}.{p.pid}.tmp"
    stale.write_text("x")
    assert C.sweep_stale(tmp_path) == [stale]


# -- concurrency --------------------------------------------------------------------------------------

def _slow_entry() -> dict:
    import time

    time.sleep(1.0)  # long enough that, without the lock, both processes would be computing at once
    return {"x": torch.arange(200_000.0).sin()}


def _compute_entry(path, start, out):
    start.wait()
    data, cached = C.load_or_compute(path, {"k": 1}, _slow_entry, version=1, fields=("x",))
    out.put((cached, float(data["x"].sum())))


def test_two_processes_computing_one_entry_both_get_it_uncorrupted(tmp_path):
    ctx = mp.get_context("spawn")  # fresh interpreters: a fork of this one could hang in OpenMP
    path, start, out = C.entry_file(tmp_path / "entry.pt", 1), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_compute_entry, args=(path, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    results = sorted(out.get(timeout=5) for _ in procs)
    assert [p.exitcode for p in procs] == [0, 0]
    assert [r[0] for r in results] == [False, True]  # one computed, the other waited and read it
    assert results[0][1] == results[1][1] == float(torch.arange(200_000.0).sin().sum())
    assert C.read_entry(path, {"k": 1}, 1, ("x",)) is not None
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.bad"))


# -- hashing ------------------------------------------------------------------------------------------

def test_the_one_hashing_helper_keeps_every_keys_value():
    """The formulas the keys were computed with before there was one helper, written out with hashlib:
    a changed value would silently orphan every user's caches and artifact identities."""
    from diffode.core.schedules import DiscreteVP
    from diffode.methods.callbacks import weights_digest
    from diffode.metrics.fid import stats_path
    from diffode.models import file_sha256, schedule_spec, tensor_sha1

    spec = {"b": [1, 2.5, None], "a": {"x": "y"}, "p": Path("/x")}
    assert C.key_digest(spec) == hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]
    t, u = torch.randn(3, 4), torch.arange(5)
    h = hashlib.sha1()
    for x in (t, u):
        h.update(x.to(torch.float64).numpy().tobytes())
    assert tensor_sha1(t, u) == h.hexdigest()[:16]
    assert file_sha256(C.__file__) == hashlib.sha256(Path(C.__file__).read_bytes()).hexdigest()
    m = torch.nn.Linear(3, 2)
    h = hashlib.sha256()
    for name, x in sorted(m.state_dict().items()):
        h.update(name.encode())
        h.update(x.numpy().tobytes())
    assert weights_digest(m) == h.hexdigest()
    vp = DiscreteVP()
    assert schedule_spec(vp)["params"]["table_sha1"] == hashlib.sha1(vp.log_alphas.numpy().tobytes()).hexdigest()[:16]
    assert stats_path("digits", "f").name.endswith(hashlib.sha1(b"digits|f").hexdigest()[:10] + ".cache2-v1.pt")
    from diffode.evaluation.runner import settings_hash

    cfg = OmegaConf.create({"source": {"kind": "gmm"}, "n_samples": 4, "seed": 0, "afs": False, "denoise_to_zero": False,
                            "metric": "auto", "fid": {}, "gmm_metrics": {}, "sweep": {}})
    keys = dict(source={"kind": "gmm"}, n_samples=4, seed=0, afs=False, denoise_to_zero=False, metric="auto", fid={},
                gmm={}, reference=None, solver_options=None, grid_options=None)
    assert settings_hash(cfg) == hashlib.sha1(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


# -- no pickles from disk -----------------------------------------------------------------------------

def _unsafe_loads(tree: ast.AST) -> list[int]:
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        owner = getattr(f.value, "id", "") if isinstance(f, ast.Attribute) else ""
        kw = {k.arg: k.value for k in node.keywords}
        if name == "load" and owner == "torch":
            safe = kw.get("weights_only")
            if not (isinstance(safe, ast.Constant) and safe.value is True):
                bad.append(node.lineno)
        elif (owner, name) in {("pickle", "load"), ("pickle", "loads"), ("dill", "load"), ("joblib", "load")}:
            bad.append(node.lineno)
        elif name == "load" and isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
            bad.append(node.lineno)
    return bad


# The one unpickling allowed: an NVlabs EDM network is a pickle by its authors' choice; load_edm_pickle runs only
# with the caller's explicit trust (source.trust_pickle=true / convert-edm --trust) and refuses otherwise
# (tests/test_edm_source.py), and `diffode convert-edm` turns it into a weights-only file once.
ALLOWED = {"nets/edm.py": "load_edm_pickle"}


def _lines_of(tree: ast.AST, function: str) -> set[int]:
    return {n.lineno for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == function
            for n in ast.walk(f) if hasattr(n, "lineno")}


def test_no_code_of_the_package_loads_a_pickle():
    """Every torch.load passes weights_only=True (a literal); no pickle/dill/joblib loads, no allow_pickle (but in
    the one trusted-only EDM loader)."""
    found = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        name, tree = str(f.relative_to(PACKAGE)), ast.parse(f.read_text())
        allowed = _lines_of(tree, ALLOWED[name]) if name in ALLOWED else set()
        if lines := [n for n in _unsafe_loads(tree) if n not in allowed]:
            found[name] = lines
    assert found == {}
    # the allowed loader exists (an entry naming nothing would hide a new load) and holds exactly one load
    tree = ast.parse((PACKAGE / "nets/edm.py").read_text())
    assert len([n for n in _unsafe_loads(tree) if n in _lines_of(tree, "load_edm_pickle")]) == 1
    # the scan itself catches what it is for
    assert _unsafe_loads(ast.parse("torch.load(p, weights_only=False)\ntorch.load(p)\npickle.load(f)")) == [1, 2, 3]
