import sys

from refgen.bench.run import main

sys.exit(main())
