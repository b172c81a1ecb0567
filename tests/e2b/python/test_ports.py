"""`get_host(port)`: an HTTP server started inside a sandbox answers at the host name the SDK
gives (`{port}-{id}.{domain}`; the server runs with `--sandbox-domain`), without a key, as
E2B's public sandbox traffic does."""

import os
import time
import urllib.parse
import urllib.request


def _get(host, path="/"):
    """GET through the server's one URL with `Host: host`, as a browser at that name would."""
    base = urllib.parse.urlsplit(os.environ["E2B_SANDBOX_URL"])
    conn_url = f"{base.scheme}://{base.netloc}{path}"
    req = urllib.request.Request(conn_url, headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_get_host_serves_an_http_server_started_inside(sandbox):
    sandbox.files.write("/tmp/www/index.html", "served from the sandbox\n")
    sandbox.commands.run(
        "cd /tmp/www && exec python3 -m http.server 8000 --bind 127.0.0.1", background=True
    )
    host = sandbox.get_host(8000)
    assert host.startswith(f"8000-{sandbox.sandbox_id}."), host
    deadline = time.time() + 20
    while True:
        status, body = _get(host)
        if status == 200 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert (status, body) == (200, "served from the sandbox\n")
    status, _ = _get(host, "/missing")
    assert status == 404
    # A port nobody listens on: the proxy's own 502.
    status, _ = _get(sandbox.get_host(8001))
    assert status == 502
