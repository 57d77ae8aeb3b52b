#!/usr/bin/env python
"""Training-step benchmark: see reproduce/bench.py (same as `python -m reproduce bench`)."""
import sys

from reproduce.bench import main

if __name__ == "__main__":
    sys.exit(main())
