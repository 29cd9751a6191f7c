import sys

from pimsim.cli import main

sys.exit(main())
