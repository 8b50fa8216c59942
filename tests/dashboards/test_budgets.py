"""The speed-accuracy frontier read as latency budgets (the overview's "which detector wins" table)."""
import pandas as pd

from dashboards.analysis import latency_budgets


def test_latency_budgets_on_a_hand_made_zoo():
    means = pd.DataFrame([
        {"variant": "yolo", "lat": 8.0, "ap": 0.02},
        {"variant": "ssd", "lat": 11.0, "ap": 0.15},
        {"variant": "no-fpn", "lat": 12.0, "ap": 0.10},   # slower and worse than ssd: off the frontier
        {"variant": "gfl", "lat": 18.0, "ap": 0.30},
        {"variant": "retina", "lat": 21.0, "ap": 0.28},   # behind gfl
        {"variant": "broken", "lat": None, "ap": 0.5},    # no latency: left out
    ])
    found = latency_budgets(means)
    # under 11 ms only yolo fits; from 11 ms ssd; from 18 ms gfl, and no more accurate variant beyond
    assert found["budgets"] == [("yolo", 8.0, 11.0), ("ssd", 11.0, 18.0), ("gfl", 18.0, None)]
    assert found["dominated"] == {"no-fpn": "ssd", "retina": "gfl"}
