"""Shared test set-up: no network, and a results store per test session (never the user's data/labkit.db)."""
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _isolated_environment(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LABKIT_OFFLINE", "1")
    mp.setenv("LABKIT_DB", str(tmp_path_factory.mktemp("store") / "labkit.db"))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def one_thread():
    """On a small shared machine two intra-op threads wait on each other (ten times slower); one is plenty."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_sessionfinish(session, exitstatus):
    # pytest already exits 5 when nothing is collected; make an all-deselected run fail the same way.
    if exitstatus == 0 and session.testscollected == 0:
        session.exitstatus = 5
