"""`python -m curation.report RUN_DIR [--out FILE]`: write the run's HTML report."""

import sys

from curation.report import main

sys.exit(main())
