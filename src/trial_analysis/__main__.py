"""``python -m trial_analysis``: the same command line as ``trial-analysis``."""

import sys

from trial_analysis.cli import main

sys.exit(main())
