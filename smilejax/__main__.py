import sys

from smilejax.cli import main

sys.exit(main())
