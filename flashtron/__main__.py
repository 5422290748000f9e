"""Entry point for ``python -m flashtron``: the same command line as the
``flashtron`` script declared in pyproject.toml, handed to :func:`flashtron.cli.main`.
"""

import sys

from flashtron.cli import main

sys.exit(main())
