import sys

from scratch.ga.cli import main

sys.exit(main())
