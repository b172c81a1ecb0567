"""The stock e2b SDK (PyPI `e2b`, pinned in requirements.txt) against a live faas server.

The runner (scripts/test.sh) sets E2B_API_URL and E2B_SANDBOX_URL to the server's one URL and
E2B_API_KEY to one of its API keys: nothing else is configured, as a user would run it.
"""

import os

import pytest
from e2b import Sandbox


def pytest_configure(config):
    for var in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"):
        if not os.environ.get(var):
            raise pytest.UsageError(f"{var} is not set: run these through scripts/test.sh")


@pytest.fixture
def sandbox():
    sbx = Sandbox.create(timeout=300)
    try:
        yield sbx
    finally:
        sbx.kill()
