"""`download_url()` and `upload_url()`: signed with the sandbox's access token, they work from any
HTTP client that has neither the token nor an API key (and a changed signature does not)."""

import httpx


def test_signed_file_urls_work_without_the_token(sandbox):
    sandbox.files.write("/tmp/signed/down.txt", "downloaded by url\n")
    url = sandbox.download_url("/tmp/signed/down.txt")
    assert "signature=" in url
    r = httpx.get(url)
    assert (r.status_code, r.text) == (200, "downloaded by url\n")

    up = sandbox.upload_url("/tmp/signed/up.txt")
    r = httpx.post(up, files={"file": ("/tmp/signed/up.txt", b"uploaded by url\n")})
    assert r.status_code == 200, r.text
    assert sandbox.files.read("/tmp/signed/up.txt") == "uploaded by url\n"

    # The read signature is for reading that path only.
    assert httpx.get(url.replace("down.txt", "up.txt")).status_code == 401
    assert httpx.post(url, files={"file": ("/tmp/signed/down.txt", b"x")}).status_code == 401
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert httpx.get(tampered).status_code == 401
