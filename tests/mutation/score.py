"""The mutation score per module from mutmut's results (mutants/, written by `mutmut run`; see `make mutate`).

score = killed / (mutants - equivalent), where killed includes mutants stopped by the timeout (an endless
loop is a caught bug) and every other outcome (survived, no covering test, not run yet) counts against
the score. Equivalent mutants are listed, each with a one-line reason, in equivalent_mutants.toml beside
this file; an entry matches a mutant by its function and by the line the mutation removed and the line it
added (whitespace-normalised), so the list survives renumbering when code elsewhere changes.

    python tests/mutation/score.py               # the table
    python tests/mutation/score.py --survivors   # also the diff of every non-equivalent survivor
    python tests/mutation/score.py --min 90      # exit 1 when a target group scores below 90%

Run from the repository root, with the interpreter that ran mutmut (it reads mutmut's own files).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
EQUIVALENTS = HERE / "equivalent_mutants.toml"
# The groups the README's target is stated for (path prefixes), and the rest shown on their own.
GROUPS = {"diffode/core/": ("diffode/core/",),
          "metrics/fid.py + evaluation/report.py": ("diffode/metrics/fid.py", "diffode/evaluation/report.py"),
          "methods (AMED predictor)": ("diffode/methods/",)}
TARGET_GROUPS = ("diffode/core/", "metrics/fid.py + evaluation/report.py")
CAUGHT = {"killed", "timeout"}


def function_of(mutant: str) -> str:
    """'diffode.core.stage.x_directed__mutmut_3' -> 'diffode.core.stage.directed' (methods: 'Class.method')."""
    name, _, _ = mutant.rpartition("__mutmut_")
    module, _, key = name.rpartition(".")
    if key.startswith("x_"):
        return f"{module}.{key[2:]}"
    _, cls, meth = key.split("ǁ")
    return f"{module}.{cls}.{meth}"


def _norm(line: str) -> str:
    return re.sub(r"\s+", " ", line.split("  #")[0]).strip()


def changed_lines(diff: str) -> tuple[str, str]:
    """(removed, added) code of a mutant's unified diff, each the changed lines joined by ' / '."""
    body = [d for d in diff.splitlines() if not d.startswith(("---", "+++", "@@"))]
    removed = " / ".join(_norm(d[1:]) for d in body if d.startswith("-"))
    added = " / ".join(_norm(d[1:]) for d in body if d.startswith("+"))
    return removed, added


def load_equivalents(path: Path = EQUIVALENTS) -> list[dict]:
    entries = tomllib.loads(path.read_text()).get("equivalent", []) if path.is_file() else []
    for e in entries:
        missing = {"function", "removed", "added", "reason"} - set(e)
        if missing:
            raise SystemExit(f"{path}: entry {e} lacks {sorted(missing)}")
    return entries


def results() -> dict[str, dict[str, str]]:
    """{source path: {mutant name: status}} from mutants/**/*.py.meta."""
    from mutmut.stats import status_by_exit_code

    out = {}
    for meta in sorted(Path("mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            src = str(meta.relative_to("mutants"))[: -len(".meta")]
            out[src] = {k: status_by_exit_code[v] for k, v in codes.items()}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--survivors", action="store_true", help="print the diff of every non-equivalent survivor")
    ap.add_argument("--min", type=float, default=None, help="exit 1 if a target group scores below this percent")
    args = ap.parse_args(argv)
    if not Path("mutants").is_dir():
        print("no mutants/ here: run `make mutate` (or `mutmut run`) from the repository root first")
        return 1
    from mutmut.configuration import config
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    config()  # mutmut's file lookups need its configuration loaded
    equivalents = load_equivalents()
    keys = {(e["function"], _norm(e["removed"]), _norm(e["added"])): i for i, e in enumerate(equivalents)}
    listed = {e["function"] for e in equivalents}
    used, wrongly_listed, survivors = set(), [], []
    rows = {}
    for src, statuses in results().items():
        c = defaultdict(int)
        for mutant, status in statuses.items():
            c["mutants"] += 1
            diff = hit = None
            # diffs are slow to read back: only for survivors and for mutants of functions the list names
            if (status not in CAUGHT and status != "not checked") or function_of(mutant) in listed:
                diff = get_diff_for_mutant(mutant, path=src)
                hit = keys.get((function_of(mutant), *changed_lines(diff)))
            if hit is not None:
                used.add(hit)
                if status in CAUGHT:
                    wrongly_listed.append((mutant, equivalents[hit]))
                else:
                    c["equivalent"] += 1
                    continue
            if status in CAUGHT:
                c["killed"] += 1
            elif status == "not checked":
                c["not run"] += 1
            else:
                c["survived" if status == "survived" else "other"] += 1
                survivors.append((mutant, status, diff))
        rows[src] = c

    def line(name, c):
        denom = c["mutants"] - c["equivalent"]
        score = 100.0 * c["killed"] / denom if denom else float("nan")
        run = denom - c["not run"]
        of_run = 100.0 * c["killed"] / run if run else float("nan")
        return (f"{name:48s} {c['mutants']:6d} {c['killed']:6d} {c['equivalent']:5d} {c['survived']:6d} "
                f"{c['other']:5d} {c['not run']:6d} {score:7.1f}% {of_run:7.1f}%"), score

    print(f"{'module':48s} {'total':>6s} {'killed':>6s} {'equiv':>5s} {'surv.':>6s} {'other':>5s} {'notrun':>6s}"
          f" {'score':>8s} {'of run':>8s}")
    for src, c in rows.items():
        print(line(src, c)[0])
    print()
    status = 0
    for group, prefixes in GROUPS.items():
        total = defaultdict(int)
        for src, c in rows.items():
            if src.startswith(prefixes):
                for k, v in c.items():
                    total[k] += v
        if not total:
            continue
        text, score = line(group, total)
        print(text)
        if args.min is not None and group in TARGET_GROUPS and not score >= args.min:
            status = 1
    print("\nscore = killed (incl. timeout) / (total - equivalent); other = no covering test, suspicious, "
          "segfault, skipped; notrun = not run yet (counted against the score; 'of run' leaves them out)")
    for mutant, e in wrongly_listed:
        print(f"LISTED AS EQUIVALENT BUT KILLED (fix {EQUIVALENTS.name}): {mutant}: {e['added']}")
    mutated = {src[:-3].replace("/", ".") for src in rows}
    for i, e in enumerate(equivalents):
        if i not in used and any(e["function"].startswith(m + ".") for m in mutated):
            print(f"stale entry in {EQUIVALENTS.name} (matches no mutant now): {e['function']}: {e['added']}")
    if args.survivors:
        for mutant, st, diff in survivors:
            print(f"\n# {mutant}: {st}\n{diff}")
    return 1 if wrongly_listed else status


if __name__ == "__main__":
    sys.exit(main())
