"""Worker-side code of detbench: data, models, losses, training, evaluation, speed.

Everything here runs inside Ray workers and must never import ``platform`` (the
driver package shadows a stdlib module workers load first) or ``dashboards``.
"""
