import sys

from selora.cli import main

sys.exit(main())
