"""Kernel tests run the generated Triton kernels on the CPU with Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported; tests/conftest.py sets it before
any test runs (pytest loads it for every test below tests/, this folder run alone included), since
Inductor may import triton in an earlier test of the same worker. `ARCHC_KERNELS_FULL=1` runs every
spec, size and dtype; the default run is a fixed sample that takes a few seconds a test.
"""
