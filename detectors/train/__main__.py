"""``python -m detectors.train trial.json``: one trial without Ray (``detectors.train.run``)."""
import sys

from detectors.train.run import main

sys.exit(main())
