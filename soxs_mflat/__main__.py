"""Allow ``python -m soxs_mflat ...``."""

import sys

from soxs_mflat.cli import main

sys.exit(main())
