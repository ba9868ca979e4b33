import sys

from .sidecar import main

sys.exit(main())
