"""Running a study: Ray Tune orchestration, the driver's callbacks and progress, the cluster, the speed
phase, the summary.
"""
