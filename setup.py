"""Build of the optional C fast path of the chain verifier (``vaultkeeper._chainscan``).

All metadata lives in pyproject.toml; this file only declares the extension. It is optional at
build time: without a working C compiler ``pip install`` still succeeds (setuptools prints a
warning) and :mod:`vaultkeeper.chain.scan` uses its pure-Python path.
"""

from setuptools import Extension, setup

_SRC = "src/vaultkeeper/_chainscan"

setup(
    # the sources sit in a directory that package discovery takes for a namespace package
    exclude_package_data={"vaultkeeper._chainscan": ["*.c", "*.h"]},
    ext_modules=[
        Extension(
            "vaultkeeper._chainscan",
            sources=[f"{_SRC}/chainscan.c", f"{_SRC}/blake3_portable.c"],
            depends=[f"{_SRC}/blake3_portable.h"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ],
)
