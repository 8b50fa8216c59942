"""Ray Tune's searcher for one variant's tuning samples (``platform.runner.tuning``).

Optuna, through Ray Tune's ``OptunaSearch``, draws the values; this adapter turns each draw into
the variant's tuning trial dict, so the trainable, the callbacks and the cache see a sample as
they see any trial. Only the driver runs it.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from ray.tune.search import Searcher


class SampleSearcher(Searcher):
    """Ray Tune's searcher for one variant: Optuna (``inner``) draws the values, and this turns
    them into the variant's tuning trial dict (``make(values, sample)``), as the expansion does for
    a sweep; results go back to Optuna, a finished sample with its last score on the held-out part."""

    def __init__(self, inner, make: Callable[[Dict[str, Any], int], dict], metric: str, first: int = 0) -> None:
        super().__init__(metric=metric, mode="max")
        self.inner, self.make, self.next = inner, make, first
        self.last: Dict[str, float] = {}  # Tune trial id -> its last score

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the space is the inner searcher's, given when it was made

    def suggest(self, trial_id: str) -> Optional[Dict]:
        values = self.inner.suggest(trial_id)
        if not isinstance(values, dict):
            return values  # None (wait) or Searcher.FINISHED
        sample, self.next = self.next, self.next + 1
        return {"trial": self.make(values, sample)}

    def on_trial_result(self, trial_id: str, result: Dict) -> None:
        if self.metric in result:
            self.last[trial_id] = result[self.metric]
            self.inner.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: Optional[Dict] = None, error: bool = False) -> None:
        if result and self.metric in result:
            self.last[trial_id] = result[self.metric]
        score = self.last.get(trial_id)
        self.inner.on_trial_complete(trial_id, None if score is None else {self.metric: score}, error=error)
