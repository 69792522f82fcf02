"""``python -m sparsemm``: the command line."""

import sys

from sparsemm.cli import main

sys.exit(main())
