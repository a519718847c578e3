import sys

from refgen.cli import bench_main

sys.exit(bench_main())
