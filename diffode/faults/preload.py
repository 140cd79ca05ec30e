"""Imported by the harness's forkserver (mode fork): everything the jobs use, once, so that each forked job
starts with its imports done. Nothing here runs a torch op: the server must fork cleanly."""
import matplotlib.backends.backend_agg  # noqa: F401
import torchmetrics.image.fid  # noqa: F401

import diffode.cli.evaluate  # noqa: F401
import diffode.cli.train  # noqa: F401
import diffode.evaluation.figures  # noqa: F401
import diffode.evaluation.metrics  # noqa: F401
import diffode.evaluation.report  # noqa: F401
import diffode.evaluation.runner  # noqa: F401
import diffode.evaluation.sweep  # noqa: F401
import diffode.faults.child  # noqa: F401
from diffode.methods.registry import _load_all

_load_all()
