import sys

from keyd.cli import main

sys.exit(main())
