import sys

from refgen.cli import main

sys.exit(main())
