"""One small module per solver family; each registers its solvers in `registry.SOLVERS`."""
import importlib
import pkgutil

from .registry import SOLVERS, SolverSpec, get_solver, register


def _load_all():
    for m in pkgutil.iter_modules(__path__):
        if m.name not in ("registry",) and not m.name.startswith("_"):
            importlib.import_module(f"{__name__}.{m.name}")


_load_all()

__all__ = ["SOLVERS", "SolverSpec", "get_solver", "register"]
