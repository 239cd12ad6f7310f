"""``python -m benchmarks.peers``: the command line, and the child process ``run_peer`` starts."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
