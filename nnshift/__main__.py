import sys

from nnshift.cli import main

sys.exit(main())
