"""Training a trial: the entry point (run.py, also `python -m detectors.train`), the epoch loop over
phases, checkpoints, where it runs (one process or DDP workers), the Ray Tune adapter.
"""
