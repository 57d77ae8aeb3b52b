#!/usr/bin/env python
"""The training-step benchmark, run from anywhere: benchmarks/bench.py says what it measures."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not installed with the package

from benchmarks.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
