"""`python -m quiltmount.daemon OPTIONS-JSON READY-FD`: the daemon process `launcher` starts."""

import sys

from quiltmount.daemon.entry import main

raise SystemExit(main(sys.argv[1:]))
