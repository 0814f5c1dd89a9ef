import sys

from mcluster.cli import main

sys.exit(main())
