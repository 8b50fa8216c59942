"""One clock for a trial's duration, shared by the driver's callbacks.

The progress line's "done ... in 1m21s", the results store's ``duration_s`` and
the MLflow child run's duration (end time minus start time) are one figure: from
the trial's first start in this invocation to its completion or final failure.
A trial that crashed and was retried counts every attempt and the time between
them; a trial resumed in a later invocation counts only that invocation (its
MLflow run, continued from the earlier one, keeps its first start time, so there
the run's duration is longer; the ``duration_s`` metric of the run is the figure).

Timestamps are wall-clock seconds rounded to the millisecond, MLflow's
resolution, so every figure derived from them agrees exactly.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional, Tuple


def millis(t: float) -> int:
    """Seconds since the epoch -> MLflow's integer milliseconds."""
    return int(round(t * 1000))


class TrialClock:
    """Start and end timestamps per Tune trial id; the first call of each wins.

    Tune calls every callback for one event in turn, so each callback may call
    :meth:`start` and :meth:`stop` and all of them get the same timestamps,
    taken when the first one heard of the event.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now
        self.starts: Dict[str, float] = {}
        self.ends: Dict[str, float] = {}

    def now(self) -> float:
        return round(self._now(), 3)

    def start(self, trial_id: str) -> float:
        """The trial's first start (a retry's start leaves it unchanged)."""
        return self.starts.setdefault(trial_id, self.now())

    def stop(self, trial_id: str) -> float:
        """The trial ended (finished or failed for good); returns its duration in seconds."""
        end = self.ends.setdefault(trial_id, self.now())
        return self.duration(trial_id, end)

    def span(self, trial_id: str) -> Tuple[float, float]:
        """(first start, end) of a trial that :meth:`stop` has seen, in epoch seconds."""
        return self.starts[trial_id], self.ends[trial_id]

    def duration(self, trial_id: str, end: Optional[float] = None) -> float:
        """Seconds from the first start to ``end`` (default: the recorded end, else now)."""
        end = end if end is not None else self.ends.get(trial_id, self.now())
        return round(end - self.starts.get(trial_id, end), 3)
