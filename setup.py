"""Build hook for the C extension; everything else is in pyproject.toml.

hubbub.transport._speedups is hubbub's compiled fan-out (see
src/hubbub/transport/fanout.py). It is optional at run time: if it does not
import, the server uses its pure-Python path. It is built by every
`pip install .` / `pip install -e .` (make run, make test), which needs a C
compiler and the Python headers.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hubbub.transport._speedups",
            sources=["src/hubbub/transport/_speedups.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
