"""Benchmark evaluation for any backend: question readers, the official metrics, a resumable runner.

Pure Python (numpy and Pillow at most; pyarrow for the benchmarks distributed as parquet and the openai
client for servers, each imported only when used), so engines, servers and the PyTorch oracle are scored
by the same code.
`python -m runtime.eval ENGINE_DIR --benchmark NAME --data PATH` scores one engine directory (or, with
`--server URL`, any OpenAI-compatible server); `evaluate.py` compares several backends and the oracle.
One module per benchmark holds its reader and scoring rule (gqa.py, mmbench.py, ...); benchmarks.py
lists them all.
"""
