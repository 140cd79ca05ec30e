"""Fault injection: interrupt every kind of diffode job (SIGKILL, SIGTERM, a full disk) at moments drawn
from its own trace of writes, re-run the same command, and check that it completes with the results of an
uninterrupted run. `python -m diffode.faults` prints the figure (experiments/faults/README.md).

    jobs.py     the job kinds: small configs and the files each one exists to write
    inject.py   inside the job: the trace of writes, and the fault at one of them
    child.py    the job's process (`python -m diffode.faults.child`, or a fork of the harness)
    harness.py  scenarios: fault, re-run, checks; moments drawn by phase
    compare.py  results read back and compared bitwise
"""
