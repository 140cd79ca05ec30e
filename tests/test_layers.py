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


# The layers of docs/design.md, lowest first: a module may import its own layer and those below it.
RANK = {"core": 0, "spec": 1, "config": 1, "extras": 1, "cache": 1, "nets": 2, "data": 2, "metrics": 2, "pictures": 2,
        "models": 3, "solver_inputs": 3, "density": 3, "artifacts": 3, "methods": 4, "evaluation": 4, "cli": 5,
        "faults": 6}


def _import_graph() -> dict[str, set[str]]:
    """diffode module -> the diffode modules it imports anywhere in its file (module- and function-level), read
    from the source. An import of a module's own enclosing package (`from . import x` re-exports) is left out."""
    import ast
    from pathlib import Path

    import diffode

    root = Path(diffode.__file__).parent
    files = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph = {}
    for mod, f in files.items():
        pkg = mod if f.name == "__init__.py" else mod.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for t in names:
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != mod and not mod.startswith(t + "."):
                    out.add(t)
        graph[mod] = out
    return graph


def test_imports_point_down_the_layers_and_form_no_circle():
    graph = _import_graph()
    rank = {m: RANK.get(m.split(".")[1]) if "." in m else 9 for m in graph}
    assert not [m for m, r in rank.items() if r is None], "a module outside the known layers: add it to RANK"
    up = [f"{a} -> {b}" for a, bs in graph.items() for b in bs if rank[b] > rank[a]]
    assert not up, f"imports up the layers: {up}"
    # no circle: a depth-first search finds no back edge
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(n):] + [n])}")
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
