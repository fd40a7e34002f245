"""``python -m fairsteer``: the same command line as the ``fairsteer`` script."""

import sys

from fairsteer.cli import main

sys.exit(main())
