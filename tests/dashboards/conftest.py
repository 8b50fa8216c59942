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


@pytest.fixture(scope="session")
def gallery_reports(tmp_path_factory):
    """The fake study with its val images on disk (so it has a gallery page), built once."""
    from platform.track.store import Store

    from dashboards import build_study

    root = tmp_path_factory.mktemp("gallery")
    store = Store(f"sqlite:///{root}/results.db")
    fakes.populate(store, str(root), images=True)
    ctx = build_study(store, fakes.STUDY, str(root / "reports"), resamples=20)
    yield {"root": root, "store": store, "ctx": ctx, "reports": root / "reports"}
    store.close()
