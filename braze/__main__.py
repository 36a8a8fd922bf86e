"""``python -m braze``: the ``braze`` command line."""

import sys

from braze.cli import main

sys.exit(main())
