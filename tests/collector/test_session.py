"""Console sessions and the console's files: an API token exchanged for a cookie that the
page cannot read, changes that need the CSRF token too, the session ending with its token.

The cookie is Secure (HTTPS only), so these in-process tests send it by hand; the browser tests
(tests/e2e/test_console.py) use it as a browser does."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outpost_iot.collector._enrollment import hash_token
from tests.collector._api_fixture import Api


async def _sign_in(api: Api, token: str) -> tuple[str, dict[str, object]]:
    r = await api.client.post("/api/v1/session", json={"token": token})
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    session_id = cookie.split(";")[0].split("=", 1)[1]
    return session_id, r.json()


def _cookie(session_id: str) -> dict[str, str]:
    return {"Cookie": f"outpost_session={session_id}"}


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_a_session_acts_as_its_token_and_its_changes_need_the_csrf_token(api: Api) -> None:
    r = await api.client.post("/api/v1/session", json={"token": api.tokens["operator-a"]})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=strict", "Path=/", "Max-Age=43200"):
        assert flag.lower() in cookie.lower(), cookie
    body = r.json()
    assert (body["tenant"], body["role"]) == ("acme", "operator")
    assert api.tokens["operator-a"] not in r.text  # the token is not given back
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert session_id not in api.dump().decode("latin-1")  # only its hash is stored

    listed = await api.client.get("/api/v1/gateways", headers=_cookie(session_id))
    assert listed.status_code == 200
    assert {g["id"] for g in listed.json()} == {api.gateways["a1"], api.gateways["a2"]}

    made = {"site": "hq"}
    r = await api.client.post("/api/v1/enrollment-tokens", json=made, headers=_cookie(session_id))
    assert r.status_code == 403
    assert "X-CSRF-Token" in r.json()["detail"]
    wrong = {**_cookie(session_id), "X-CSRF-Token": "not-it"}
    r = await api.client.post("/api/v1/enrollment-tokens", json=made, headers=wrong)
    assert r.status_code == 403
    right = {**_cookie(session_id), "X-CSRF-Token": str(body["csrf"])}
    r = await api.client.post("/api/v1/enrollment-tokens", json=made, headers=right)
    assert r.status_code == 201
    # A bearer token needs no CSRF token: no browser sends it by itself.
    r = await api.client.post(
        "/api/v1/enrollment-tokens",
        json=made,
        headers={"Authorization": f"Bearer {api.tokens['operator-a']}"},
    )
    assert r.status_code == 201

    again = await api.client.get("/api/v1/session", headers=_cookie(session_id))
    assert again.json()["csrf"] == body["csrf"]
    assert again.headers["cache-control"] == "no-store"

    r = await api.client.delete("/api/v1/session", headers=right)
    assert r.status_code == 204
    assert "outpost_session=" in r.headers["set-cookie"]  # cleared
    r = await api.client.get("/api/v1/gateways", headers=_cookie(session_id))
    assert r.status_code == 401


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_a_session_ends_with_its_token_and_a_viewers_session_stays_a_viewer(
    api: Api,
) -> None:
    session_id, body = await _sign_in(api, api.tokens["viewer-a"])
    right = {**_cookie(session_id), "X-CSRF-Token": str(body["csrf"])}
    r = await api.client.post("/api/v1/enrollment-tokens", json={"site": "hq"}, headers=right)
    assert r.status_code == 403
    assert "operator" in r.json()["detail"]
    r = await api.client.get("/api/v1/gateways", headers=_cookie(session_id))
    assert r.status_code == 200
    record = api.docs.api_token(hash_token(api.tokens["viewer-a"]))
    assert record is not None
    assert api.docs.revoke_api_token(record.id, 1)
    r = await api.client.get("/api/v1/gateways", headers=_cookie(session_id))
    assert r.status_code == 401


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_failed_sign_ins_are_limited_per_address(api: Api) -> None:
    for _ in range(10):
        r = await api.client.post("/api/v1/session", json={"token": "opa_guess"})
        assert r.status_code == 401
        assert "opa_guess" not in r.text
    r = await api.client.post("/api/v1/session", json={"token": api.tokens["viewer-a"]})
    assert r.status_code == 429  # even the right one, until the address may try again
    assert int(r.headers["retry-after"]) >= 1
    r = await api.client.post("/api/v1/session", json={"token": "x" * 300})
    assert r.status_code == 422


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_forged_or_oversized_cookies_are_strangers(api: Api) -> None:
    for value in ("", "x", "a" * 500, "../../etc/passwd", "\u00e9t\u00e9"):
        r = await api.client.get(
            "/api/v1/gateways", headers={"Cookie": f"outpost_session={value}".encode()}
        )
        assert r.status_code == 401


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
async def test_the_console_is_served_with_a_strict_policy_and_nothing_else(api: Api) -> None:
    r = await api.client.get("/")
    assert r.status_code == 308
    assert r.headers["location"] == "/console/"
    r = await api.client.get("/console/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script src=" in r.text
    assert "<script>" not in r.text  # no inline script: the policy would block it
    for name in ("console.js", "console.css", "vendor/uplot-1.6.31.min.js"):
        assert (await api.client.get(f"/console/{name}")).status_code == 200
    for name in ("../_console.py", "..%2F_console.py", "console.py", "vendor/", "index.htm"):
        assert (await api.client.get(f"/console/{name}")).status_code == 404
    licence = await api.client.get("/console/vendor/uplot-LICENSE.txt")
    assert "MIT License" in licence.text


_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)


@pytest.mark.parametrize("api", ["sqlite"], indirect=True)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(cookie=_header_text, csrf=_header_text, method=st.sampled_from(["GET", "POST", "DELETE"]))
async def test_no_cookie_or_csrf_value_but_the_sessions_own_acts_for_it(
    api: Api, cookie: str, csrf: str, method: str
) -> None:
    """Whatever a caller puts in the cookie and the CSRF header, it is a stranger (401), or,
    with the real session's cookie, may read but not change anything (403); never a server
    error, and the session still works afterwards."""
    session_id, session = await _sign_in(api, api.tokens["operator-a"])
    body = {"site": "hq"} if method == "POST" else None
    path = "/api/v1/session" if method == "DELETE" else "/api/v1/enrollment-tokens"

    async def call(cookie_value: str) -> int:
        headers = {"Cookie": f"outpost_session={cookie_value}", "X-CSRF-Token": csrf}
        r = await api.client.request(method, path, json=body, headers=headers)
        return r.status_code

    assert await call(cookie) == 401
    if csrf != session["csrf"]:
        assert await call(session_id) == (200 if method == "GET" else 403)
    r = await api.client.get("/api/v1/session", headers=_cookie(session_id))
    assert r.json()["csrf"] == session["csrf"]
