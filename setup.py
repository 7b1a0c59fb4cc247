"""The one compiled part: the matrix multiply of the reproducible CPU path (siamese/gemm.py).
Everything else about the package is in pyproject.toml."""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "siamese/_gemm.c"
# Built into the library, so that siamese.gemm refuses a build older than the source beside it.
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

# -ffp-contract=off: the compiler fuses no multiply and add of its own; every fma the kernel
# runs is written out in it.
setup(ext_modules=[Extension("siamese._gemm", [SOURCE],
                             define_macros=[("SOURCE_SHA256", f'"{DIGEST}"')],
                             extra_compile_args=["-O3", "-ffp-contract=off"])])
