"""Every command of README.md and experiments/*/README.md runs as written.

This test is how the project meets issue 8's "every command of the README and of every
experiments/*/README.md runs as written". It reads the Markdown, takes every shell command line in a
fenced code block (bash / sh / console / no language) or an indented code block that starts with
`diffode `, `python experiments/`, `bash experiments/` or `make `, and checks each one cheaply,
without running the job:

- `diffode ...`: dispatched by the real console entry (diffode.cli.main, with the Hydra launch
  replaced by a capture), then composed and resolved with Hydra from the packaged configs exactly as
  `diffode ... --cfg job --resolve` would (with `-m`, every job of the sweep, at most MAX_JOBS); for a
  multirun also the launcher's config (submitit / SLURM). Then the entry's checks that run before
  any compute: `diffode train` runs the runner's `prepare` (the method's check, the teacher model and
  the data), `diffode eval` builds its cells and, when the model is on this machine, validates them
  against it (reachable NFEs, artifacts made for this model). `diffode fetch-weights <key>` checks
  the key. All of it in ONE subprocess (`python tests/test_readme_commands.py`, cwd the repo root),
  so Hydra, torch and Lightning are imported once.
- `python experiments/<...>.py args`: the script runs as `python` would run it (its folder first on
  sys.path) up to its argparse `parse_args`, which must accept the arguments as written; the script
  stops there. A script without argparse is imported (not run as __main__).
- `bash experiments/<...>.sh`: `bash -n` (syntax). `make <target>`: `make -n <target>` (dry run).

Filled in, not skipped: `$PWD` (the repo root), the loop variables of a `for v in a b c; do` line in
the same block (their first value), and `<gpu partition>` (a partition name: only the launcher config
is composed). Skipped, each listed by test_skips_are_only_the_documented_kinds with its reason:

- a command that needs a path the reader supplies: a `<...>` placeholder such as `<run dir>`, `???`
  or `...` standing for elided arguments;
- a shell variable other than those above (`$SOMETHING` set elsewhere);
- a line inside a block whose first line says it is GPU/cluster-only (`# GPU only`, `# cluster only`).
Commands in running text (inline `code`) are not extracted: the README's commands live in blocks.

A study is often a training command followed by an eval of what it wrote (`diffode ld3 -m ...
hydra.sweep.dir=outputs/x` then `diffode eval sweep.learned=[outputs/x]`). Such an eval is checked in full
except for the `sweep.learned` entries that an EARLIER training command of the same README writes (under its
output_dir / hydra.run.dir / hydra.sweep.dir): those exist only after that command ran, so they are left
out of the cell check and named in the result. Every command line is also parsed by Hydra's own argparse as
the real entry hands it over (a flag such as -m after an override is refused there, not only by Hydra).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIXES = ("diffode ", "python experiments/", "bash experiments/", "make ")
SHELL_LANGS = ("", "bash", "sh", "shell", "console", "zsh")
FILL = {"<gpu partition>": "gpu"}  # cluster settings: composing the launcher config needs a value only
MAX_JOBS = 64
PLACEHOLDER = re.compile(r"<[^<>\n]+>|\?\?\?|(?<![\w.])\.\.\.(?![\w.])")
SHELL_VAR = re.compile(r"\$\{?([A-Za-z_]\w*)\}?")
SKIP_BLOCK = re.compile(r"#.*\b(gpu|cluster)[- ]only\b", re.I)


@dataclass
class Command:
    source: str  # file:line
    text: str  # as written (continuations joined)
    run: str = ""  # what is checked (placeholders filled); "" when skipped
    skip: str = ""  # why it is skipped
    loop_vars: dict = field(default_factory=dict)
    later: list = field(default_factory=list)  # sweep.learned entries an earlier command of the file writes


TRAINING_OUT = re.compile(r"^(?:output_dir|hydra\.run\.dir|hydra\.sweep\.dir)=(.+)$")


def _outputs(part: str) -> list[tuple[str, bool]]:
    """Where a `diffode train | <method>` command writes: (path, cut) for its output_dir / hydra.run.dir /
    hydra.sweep.dir, a path with a shell variable cut before it (cut=True: a prefix of every path it writes)."""
    try:
        argv = shlex.split(part)
    except ValueError:
        return []
    if argv[:1] != ["diffode"] or argv[1:2] in (["eval"], ["report"], ["main"], ["fetch-weights"]):
        return []
    out = []
    for a in argv[2:]:
        m = TRAINING_OUT.match(a)
        if m:
            path = m.group(1).replace("$PWD", str(REPO)).replace("${PWD}", str(REPO))
            cut = "$" in path
            out.append((path.split("$")[0] if cut else path.rstrip("/"), cut))
    return [(p, c) for p, c in out if p]


def _written_earlier(entry: str, produced: list[tuple[str, bool]]) -> bool:
    e = entry.strip().rstrip("/")
    return any(e.startswith(p) if cut else (e == p or e.startswith(p + "/") or p.startswith(e + "/"))
               for p, cut in produced)


def _drop_later(run: str, produced: list[tuple[str, bool]]) -> tuple[str, list[str]]:
    """An eval / report command without the sweep.learned entries that earlier commands write."""
    argv = shlex.split(run)
    if argv[1:2] not in (["eval"], ["report"]) or not produced:
        return run, []
    later = []
    for i, a in enumerate(argv):
        m = re.match(r"^(\+?sweep\.learned(?:_grids)?)=\[(.*)\]$", a)
        if m:
            entries = [e.strip() for e in m.group(2).split(",") if e.strip()]
            later += [e for e in entries if _written_earlier(e, produced)]
            argv[i] = f"{m.group(1)}=[{','.join(e for e in entries if not _written_earlier(e, produced))}]"
    return (shlex.join(argv), later) if later else (run, [])


def _strip_comment(line: str) -> str:
    """The line without a trailing shell comment (a # that starts a word, outside quotes)."""
    quote, out = None, []
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out).strip()


def _blocks(text: str):
    """(first line number, [lines]) of every shell code block: fenced (``` / ~~~) or indented (4 spaces)."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```|~~~)\s*([\w+-]*)", lines[i])
        if m:
            fence, lang, start, body = m.group(2), m.group(3).lower(), i + 1, []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(fence):
                body.append(lines[i])
                i += 1
            if lang in SHELL_LANGS:
                yield start + 1, body
            i += 1
            continue
        if lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            start, body = i, []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                body.append(lines[i][4:])
                i += 1
            yield start + 1, body
            continue
        i += 1


def extract(text: str, name: str) -> list[Command]:
    """The commands of one Markdown text, in order."""
    out, produced = [], []
    for first, body in _blocks(text):
        skip_block = bool(body) and bool(SKIP_BLOCK.search(body[0]))
        loop_vars: dict = {}
        j = 0
        while j < len(body):
            lineno, line = first + j, body[j].rstrip()
            while line.endswith("\\") and j + 1 < len(body):  # continuation lines
                j += 1
                line = line[:-1].rstrip() + " " + body[j].strip()
            j += 1
            line = _strip_comment(line)
            for m in re.finditer(r"\bfor\s+([A-Za-z_]\w*)\s+in\s+([^;]+);\s*do\b", line):
                loop_vars[m.group(1)] = m.group(2).split()[0]
            for part in (p.strip() for p in re.split(r"&&|;", line)):
                part = re.sub(r"^(/usr/bin/time(\s+-v)?\s+|([A-Z_]+=\S+\s+)+)", "", part)
                if not part.startswith(PREFIXES):
                    continue
                cmd = Command(f"{name}:{lineno}", part, loop_vars=dict(loop_vars))
                run = re.split(r"\s\|\s", part)[0]  # what a pipe feeds (| tee ...) is not the command
                run = re.sub(r"\s+(?:\d|&)?>>?\s*(?:&\d|\S+)", "", run)  # nor its redirections
                run = run.replace("$PWD", str(REPO)).replace("${PWD}", str(REPO))
                for k, v in FILL.items():
                    run = run.replace(k, v)
                for var, val in loop_vars.items():
                    run = re.sub(r"\$\{" + var + r"\}|\$" + var + r"\b", val, run)
                if skip_block:
                    cmd.skip = "in a block marked GPU/cluster-only"
                elif PLACEHOLDER.search(run):
                    cmd.skip = f"needs a path or value the reader supplies ({PLACEHOLDER.search(run).group(0)})"
                elif SHELL_VAR.search(run):
                    cmd.skip = f"uses the shell variable ${SHELL_VAR.search(run).group(1)}"
                else:
                    cmd.run, cmd.later = _drop_later(run, produced)
                produced += _outputs(part)
                out.append(cmd)
    return out


def readmes() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "experiments").glob("*/README.md"))]


def all_commands() -> list[Command]:
    cmds = []
    for p in readmes():
        cmds += extract(p.read_text(), str(p.relative_to(REPO)))
    return cmds


# -- the checker (runs in the subprocess) ------------------------------------------------------------

class _Captured(Exception):
    pass


def _entry_of(argv: list[str]):
    """(config name, overrides) that `diffode <argv>` hands to Hydra, from the real dispatch."""
    import diffode.cli as cli

    seen = {}

    def capture(module, args, prog):
        seen.update(module=module, args=list(args))
        raise _Captured

    real, cli._hydra_main = cli._hydra_main, capture
    try:
        cli.main(argv)
    except _Captured:
        pass
    finally:
        cli._hydra_main = real
    if not seen:
        raise ValueError("the command does not reach a Hydra entry")
    names = {"diffode.cli.train": "train", "diffode.cli.evaluate": "eval", "diffode.cli.report": "report"}
    if seen["module"] not in names:
        raise ValueError(f"unknown Hydra entry module {seen['module']} (add its config name to the checker)")
    return names[seen["module"]], seen["args"]


def _jobs(args: list[str]) -> tuple[bool, list[list[str]]]:
    """(multirun, the override lists of its jobs) from Hydra command-line arguments."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun, overrides, it = False, [], iter(args)
    for a in it:
        if a in ("-m", "--multirun"):
            multirun = True
        elif a in ("--cfg", "-c"):
            next(it, None)
        elif a in ("--resolve",):
            pass
        elif a.startswith("-"):
            raise ValueError(f"the checker does not know the Hydra flag {a!r}")
        else:
            overrides.append(a)
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for text, o in zip(overrides, parsed):
        if o.is_sweep_override():
            if not multirun:
                raise ValueError(f"{text!r} is a sweep: it needs -m (--multirun)")
            choices.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            choices.append([text])
    jobs = [list(c) for c in itertools.product(*choices)]
    if len(jobs) > MAX_JOBS:
        raise ValueError(f"{len(jobs)} jobs: more than the checker's {MAX_JOBS}")
    return multirun, jobs


def _check_job(entry: str, overrides: list[str], multirun: bool, tmp: Path, later: list[str] = ()) -> str:
    from hydra import compose
    from omegaconf import OmegaConf, open_dict

    cfg = compose("eval" if entry == "report" else entry, overrides=overrides, return_hydra_config=True)
    hydra_cfg = cfg.hydra
    if multirun:
        OmegaConf.to_container(hydra_cfg.launcher, resolve=True)
        str(hydra_cfg.sweep.dir)
    else:
        str(hydra_cfg.run.dir)
    choices = dict(hydra_cfg.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.to_container(cfg, resolve=True)  # = --cfg job --resolve
    if entry == "train":
        from diffode.cli.train import prepare

        with open_dict(cfg):
            cfg.output_dir = str(tmp)
        spec, _, _ = prepare(cfg)
        return f"composed, resolved, method={spec.name} passes its checks"
    from diffode.evaluation.sweep import build_cells, validate_cells
    from diffode.models import load_model

    try:
        cells = build_cells(cfg, choices)
    except ValueError as e:
        if later and "no cells" in str(e):  # all of them are the artifacts an earlier command writes
            return "composed, resolved; its cells are the artifacts an earlier command writes"
        raise
    if entry == "report":  # it re-renders a finished sweep: its table must be there, made with these settings
        from diffode.evaluation.runner import settings_hash
        from diffode.evaluation.results import ResultsTable
        from diffode.evaluation.sweep import resolve_path

        table = resolve_path(cfg.output_dir) / "results.csv"
        if not table.is_file():
            raise ValueError(f"diffode report: no {table}")
        ResultsTable(table, settings_hash(cfg))
        return f"composed, resolved, {len(cells)} cells; {table} matches their settings"
    try:
        model = load_model(cfg.source)
    except FileNotFoundError as e:
        return f"composed, resolved, {len(cells)} cells built (model not on this machine: {e})"
    _, unreachable = validate_cells(cells, model, cfg)
    if len(unreachable) == len(cells):
        raise ValueError("no cell of the sweep is reachable")
    return f"composed, resolved, {len(cells)} cells valid for the model"


def check_diffode(run: str, tmp: Path, later: list[str] = ()) -> str:
    argv = shlex.split(run)[1:]
    if argv and argv[0] == "fetch-weights":
        from diffode.metrics.weights import WEIGHTS

        bad = [k for k in argv[1:] if k != "all" and k not in WEIGHTS]
        if bad:
            raise ValueError(f"unknown weights {bad}; known: all, {', '.join(WEIGHTS)}")
        return "weights keys known (nothing downloaded)"
    entry, args = _entry_of(argv)
    from hydra._internal.utils import get_args_parser  # the parser @hydra.main runs on sys.argv

    try:
        get_args_parser().parse_args(args)
    except SystemExit:
        raise ValueError(f"Hydra's command line refuses {args} (a flag after an override?)") from None
    multirun, jobs = _jobs(args)
    notes = [_check_job(entry, job, multirun, tmp / str(i), later) for i, job in enumerate(jobs)]
    also = f"; not checked, written by an earlier command: sweep.learned {later}" if later else ""
    return f"{len(jobs)} job(s): {notes[0]}{also}"


class _Parsed(Exception):
    pass


def check_script(run: str) -> str:
    import argparse
    import runpy

    argv = shlex.split(run)[1:]
    script = REPO / argv[0]
    if not script.is_file():
        raise FileNotFoundError(f"{argv[0]} does not exist")
    has_argparse = "argparse" in script.read_text()
    old_argv, old_path, real = sys.argv, list(sys.path), argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        real(self, args, namespace)
        raise _Parsed

    sys.argv, sys.path[:0] = [str(script), *argv[1:]], [str(script.parent)]
    argparse.ArgumentParser.parse_args = parse_then_stop
    try:
        runpy.run_path(str(script), run_name="__main__" if has_argparse else "readme_check")
    except _Parsed:
        return "imports; argparse accepts the arguments"
    except SystemExit as e:
        raise ValueError(f"argparse refused the arguments (exit {e.code})") from None
    finally:
        sys.argv, sys.path[:], argparse.ArgumentParser.parse_args = old_argv, old_path, real
    if has_argparse:
        raise ValueError("the script did not reach parse_args as __main__")
    return "imports (no argparse)"


def worker(runs: list) -> list[dict]:
    """Check each command line (a string, or {run, later}); [{run, ok, detail}] in order."""
    import tempfile
    import warnings

    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from diffode.config import CONF_PACKAGE

    warnings.filterwarnings("ignore")
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, item in enumerate(runs):
            run, later = (item, []) if isinstance(item, str) else (item["run"], item["later"])
            try:
                if run.startswith("diffode "):
                    GlobalHydra.instance().clear()
                    with initialize_config_module(CONF_PACKAGE, version_base="1.3"):
                        detail = check_diffode(run, Path(tmp) / str(i), later)
                elif run.startswith("python "):
                    detail = check_script(run)
                elif run.startswith("bash "):
                    p = subprocess.run(["bash", "-n", shlex.split(run)[1]], capture_output=True, text=True, cwd=REPO)
                    if p.returncode:
                        raise ValueError(p.stderr.strip())
                    detail = "bash -n: syntax fine"
                else:
                    p = subprocess.run(["make", "-n", *shlex.split(run)[1:]], capture_output=True, text=True, cwd=REPO)
                    if p.returncode:
                        raise ValueError(p.stderr.strip())
                    detail = "make -n: the target exists"
                out.append({"run": run, "ok": True, "detail": detail})
            except BaseException as e:  # noqa: BLE001  (a bad command is a result, not a crash)
                if isinstance(e, KeyboardInterrupt):
                    raise
                msg = " ".join(f"{type(e).__name__}: {e}".split())
                out.append({"run": run, "ok": False, "detail": msg[:600]})
    return out


# -- the tests --------------------------------------------------------------------------------------

# Commands that must FAIL: the checker is not vacuous (each breaks what one kind of check looks at).
MUST_FAIL = [
    "diffode eval solver=no_such_solver grid=edm nfe=6",       # an unknown group option
    "diffode eval solver=heun grid=edm nfe=5",                 # an NFE heun cannot make
    "diffode ld3 source=gmm2d method.distance=l2 method.gamma=-1",  # a value the method's check refuses
    "diffode eval sweep.no_such_key=1",                        # a key the config does not have
    "diffode eval solver=heun,euler nfe=6",                    # a sweep without -m
    "diffode fetch-weights no_such_weights",
    "diffode report experiment=eval_main output_dir=experiments/no_such_run",  # no finished sweep there
    "diffode report output_dir=experiments/main_job",          # a table made with other settings
    "python experiments/ld3/ablation.py --no_such_flag",       # argparse refuses it
    "diffode eval solver=heun -m nfe=4,6",                     # Hydra's argparse: no flag after an override
    "diffode eval sweep.learned=[outputs/nothing_wrote_this]",  # no earlier command writes it: it must exist
    "python experiments/no_such_folder/run.py",
    "make no_such_target",
]


def _run_worker(runs: list) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, __file__], input=json.dumps(runs), capture_output=True, text=True,
                       cwd=REPO, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _results():
    if not hasattr(_results, "cache"):
        cmds = all_commands()
        runs = [{"run": c.run, "later": c.later} for c in cmds if c.run]
        res = _run_worker(runs + MUST_FAIL)
        _results.cache = (cmds, res[:len(runs)], res[len(runs):])
    return _results.cache


def test_extractor_on_a_known_text():
    text = "\n".join([
        "Intro.", "", "```bash",
        "diffode eval solver=heun \\", "    grid=edm nfe=6   # one cell",
        "for s in dpmpp_3m ipndm; do for n in 4 5; do",
        "  diffode ld3 method.solver=$s method.nfe=$n hydra.run.dir=out/${s}_nfe$n",
        "done; done",
        "/usr/bin/time -v diffode main progress=false",
        "cd x && python experiments/a/b.py --flag 'q # not a comment' > log.txt 2>&1",
        "diffode eval sweep.learned=[<run dir>/artifacts/ld3]",
        "python experiments/a/b.py --ckpt $CKPT",
        "```", "", "```python", "diffode.sample(...)", "```", "",
        "    make test", "    diffode eval -m hydra.launcher.partition=<gpu partition> source.path=$PWD/m",
        "", "```bash", "# GPU only", "diffode eval experiment=eval_cifar10", "```",
    ])
    got = extract(text, "T")
    assert [c.text for c in got] == [
        "diffode eval solver=heun grid=edm nfe=6",
        "diffode ld3 method.solver=$s method.nfe=$n hydra.run.dir=out/${s}_nfe$n",
        "diffode main progress=false",
        "python experiments/a/b.py --flag 'q # not a comment' > log.txt 2>&1",
        "diffode eval sweep.learned=[<run dir>/artifacts/ld3]",
        "python experiments/a/b.py --ckpt $CKPT",
        "make test",
        "diffode eval -m hydra.launcher.partition=<gpu partition> source.path=$PWD/m",
        "diffode eval experiment=eval_cifar10",
    ]
    assert got[3].run == "python experiments/a/b.py --flag 'q # not a comment'"
    assert got[1].run == "diffode ld3 method.solver=dpmpp_3m method.nfe=4 hydra.run.dir=out/dpmpp_3m_nfe4"
    assert got[7].run == f"diffode eval -m hydra.launcher.partition=gpu source.path={REPO}/m"
    assert [bool(c.skip) for c in got] == [False, False, False, False, True, True, False, False, True]
    assert "<run dir>" in got[4].skip and "$CKPT" in got[5].skip and "GPU" in got[8].skip
    assert got[0].source == "T:4"


def test_an_eval_of_what_an_earlier_command_writes():
    text = "\n".join([
        "```bash",
        "diffode eval sweep.learned=[out/x]",  # before the training: must exist as written
        "diffode ld3 -m method.nfe=4,5 hydra.sweep.dir=out/x",
        "for s in a b; do",
        "  diffode ld3 method.solver=$s hydra.run.dir=out/loop/${s}_nfe4",
        "done",
        "diffode eval solver=heun grid=edm nfe=6 sweep.learned=[out/x,asset:artifacts/ld3,out/xy]",
        "diffode eval sweep.solvers=[] 'sweep.learned=[out/loop/a_nfe4]'",
        "diffode eval sweep.learned=[out]",  # a folder above a training's output
        "```",
    ])
    got = extract(text, "T")
    assert [c.later for c in got] == [[], [], [], ["out/x"], ["out/loop/a_nfe4"], ["out"]]
    assert got[0].run == "diffode eval sweep.learned=[out/x]"
    assert got[3].run == "diffode eval solver=heun grid=edm nfe=6 'sweep.learned=[asset:artifacts/ld3,out/xy]'"
    assert got[4].run == "diffode eval 'sweep.solvers=[]' 'sweep.learned=[]'"


def test_the_readmes_have_commands():
    cmds = all_commands()
    files = {c.source.split(":")[0] for c in cmds}
    assert "README.md" in files and "experiments/ld3/README.md" in files
    assert sum(1 for c in cmds if c.run) >= 20


def test_skips_are_only_the_documented_kinds():
    skipped = [c for c in all_commands() if c.skip]
    kinds = ("needs a path or value the reader supplies", "uses the shell variable", "in a block marked GPU")
    assert all(c.skip.startswith(kinds) for c in skipped)
    print("\n".join(f"skipped {c.source}: {c.text}  [{c.skip}]" for c in skipped))


def test_every_readme_command_runs_as_written():
    cmds, res, _ = _results()
    checked = [c for c in cmds if c.run]
    print("\n".join(f"{'ok  ' if r['ok'] else 'FAIL'} {c.source}: {c.text}\n     {r['detail']}"
                    for c, r in zip(checked, res)))
    bad = [f"{c.source}: {c.text}\n    -> {r['detail']}" for c, r in zip(checked, res) if not r["ok"]]
    assert not bad, "README commands that do not run as written:\n" + "\n".join(bad)


def test_the_checker_rejects_broken_commands():
    _, _, res = _results()
    passed = [r["run"] for r in res if r["ok"]]
    assert not passed, f"the checker accepted commands that cannot work: {passed}"


if __name__ == "__main__":  # the worker: command lines (JSON) on stdin, results (JSON) as the last stdout line
    results = worker(json.loads(sys.stdin.read()))
    sys.stdout.flush()
    print(json.dumps(results))
