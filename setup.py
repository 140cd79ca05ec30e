"""The one thing pyproject.toml cannot say: the configs live at the repository's top level (conf/),
where the project's layout puts them, and ship inside the wheel as the package `diffode.conf`
(Hydra searches pkg://diffode.conf). Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["diffode", "diffode.*"]) + ["diffode.conf"],
    package_dir={"diffode.conf": "conf"},
    package_data={"diffode": ["assets/*", "assets/**/*"], "diffode.conf": ["*.yaml", "**/*.yaml"]},
)
