import os

import pytest

from faas_sdk import FaaSClient


@pytest.fixture(scope="session")
def url() -> str:
    u = os.environ.get("FAAS_URL")
    if not u:
        pytest.skip("FAAS_URL is not set (scripts/test.sh starts a server and sets it)")
    return u


@pytest.fixture(scope="session")
def client(url):
    """A client of the live server with its admin key (FAAS_API_KEY, the SDK's default)."""
    with FaaSClient(url) as c:
        yield c


@pytest.fixture(scope="session")
def admin(client):
    """``client``, for the tests that need its key to be an admin key."""
    if not os.environ.get("FAAS_API_KEY"):
        pytest.skip("FAAS_API_KEY is not set (scripts/test.sh exports the server's admin key)")
    return client
