"""Build of the optional C fast paths: the chain verifier (``vaultkeeper._chainscan``) and the
COPY-text row digest (``vaultkeeper._copydigest``).

All metadata lives in pyproject.toml; this file only declares the extension. It is optional at
build time: without a working C compiler ``pip install`` still succeeds (setuptools prints a
warning) and :mod:`vaultkeeper.chain.scan` uses its pure-Python path.
"""

from setuptools import Extension, setup

_SRC = "src/vaultkeeper/_chainscan"

setup(
    # the sources sit in a directory that package discovery takes for a namespace package
    exclude_package_data={
        "vaultkeeper._chainscan": ["*.c", "*.h"],
        "vaultkeeper._copydigest": ["*.c"],
    },
    ext_modules=[
        Extension(
            "vaultkeeper._chainscan",
            sources=[f"{_SRC}/chainscan.c", f"{_SRC}/blake3_portable.c"],
            depends=[f"{_SRC}/blake3_portable.h"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "vaultkeeper._copydigest",
            sources=["src/vaultkeeper/_copydigest/copydigest.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ],
)
