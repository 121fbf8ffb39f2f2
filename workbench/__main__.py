"""``python -m workbench ...``: the same command line as the ``workbench`` script (for an
environment whose scripts folder is not on PATH, e.g. ``pip install --target``)."""

import sys

from workbench.app.cli import main

if __name__ == "__main__":
    sys.exit(main())
