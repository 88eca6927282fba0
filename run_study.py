#!/usr/bin/env python
"""Run, report on, and inspect Optuna sweeps of KD methods on GLUE. See README.md."""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
