"""`python -m diffode.cli ...` = the `diffode` console script."""
from . import main

main()
