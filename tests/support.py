"""Helpers shared by the tests (pytest puts tests/ on sys.path)."""
import time


def wait_until(condition, timeout=60.0, what="condition"):
    """Poll `condition` until it is true; fail the test after `timeout` seconds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
