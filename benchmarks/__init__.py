"""ferroloop's benchmark suite: echo, HTTP and micro-benchmarks comparing
asyncio's default loop, uvloop and ferroloop. Run ``python -m benchmarks``
from the repository root; see benchmarks/README.md."""
