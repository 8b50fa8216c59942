"""One fake study, populated through the Store API and built into pages once per test session."""
import pytest

import fakes


@pytest.fixture(scope="session")
def fake_reports(tmp_path_factory):
    from platform.track.store import Store

    from dashboards import build_study

    root = tmp_path_factory.mktemp("dash")
    store = Store(f"sqlite:///{root}/results.db")
    trials = fakes.populate(store, str(root))
    ctx = build_study(store, fakes.STUDY, str(root / "reports"), resamples=100)
    yield {"root": root, "store": store, "trials": trials, "ctx": ctx, "reports": root / "reports"}
    store.close()
