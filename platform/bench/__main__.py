"""``python -m platform.bench``: the command is ``platform.bench.main``."""
import sys

from platform.bench import main

sys.exit(main())
