"""The benchmarks: `siamese bench` (suite.py, composing one module per kind of measurement) and
the GPU benchmark for a lent GPU machine (gpu.py: `python -m tools.bench.gpu`, or gpu.sh).

Empty on purpose: importing the package loads nothing, so that the GPU machine's Python, which
has torch, numpy, pandas, pyarrow and pillow but no pyyaml, tqdm, matplotlib, dvclive, DVC or
Prefect, can run tools.bench.gpu.
"""
