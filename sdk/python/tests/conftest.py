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
    with FaaSClient(url) as c:
        yield c
