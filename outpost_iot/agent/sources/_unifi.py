"""UniFi Network: a classic controller, a UniFi OS console, or the official integration API.

- **Classic controller** (port 8443): ``POST /api/login``, a session cookie, paths
  ``/api/s/{site}/…``.
- **UniFi OS** (UDM, UCG, Cloud Key Gen2+, port 443): ``POST /api/auth/login``; the session
  cookie and the ``x-csrf-token`` header go back on every request; Network paths get the
  ``/proxy/network`` prefix.
- **Integration API** (an API key made under Settings › Control Plane › Integrations):
  ``X-API-KEY``, base ``/proxy/network/integration/v1``, paged device lists and per-device
  statistics.

Which of the first two it is is found out once (``GET /`` without following redirects: 200 is
UniFi OS, a redirect is a classic controller). A session that expires (HTTP 401 or
``api.err.LoginRequired``) is renewed by logging in again, once per poll, without losing the poll.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Literal

import httpx

from outpost_iot.agent.profiles import Profile
from outpost_iot.agent.sources._polling import (
    DeviceError,
    FetchFailed,
    default_tls_context,
    device_http_client,
)

Mode = Literal["classic", "os", "integration"]
INTEGRATION_DEVICES = "integration/devices"
_PAGE = 200
_FANOUT = 4  # statistics requests in flight at once (integration API)


class _SessionExpired(Exception):
    pass


class UnifiClient:
    """Fetches the profile's endpoints from a UniFi Network application."""

    def __init__(
        self,
        *,
        profile: Profile,
        base_url: str,
        username: str | None = None,
        password: str | None = None,
        api_key: str | None = None,
        site: str = "default",
        insecure: bool = False,
        timeout: float = 10.0,
    ) -> None:
        if not api_key and (not username or password is None):
            raise DeviceError(
                "auth_failed",
                "UniFi needs a username and password (a local account without MFA), or an "
                "API key for the integration API",
            )
        self._profile = profile
        self._base = base_url.rstrip("/")
        self._username = username
        self._password = password
        self._api_key = api_key
        self.site = site
        self.mode: Mode | None = "integration" if api_key else None
        self._csrf: str | None = None
        self._logged_in = False
        self._site_id: str | None = None
        self.logins = 0  # how many times a session was opened (renewals show here)
        verify: ssl.SSLContext | bool = default_tls_context()
        if insecure:
            verify = False  # the operator accepted the console's self-signed certificate
        headers = {"Accept": "application/json"}
        if api_key:
            headers["X-API-KEY"] = api_key
        self._client = device_http_client(
            headers=headers, verify=verify, timeout=timeout, follow_redirects=False
        )

    # -- the poll ---------------------------------------------------------------------------

    async def fetch(self) -> list[tuple[str, object]]:
        if self.mode == "integration":
            devices, failed = await self._integration_devices()
            return [(INTEGRATION_DEVICES, devices), *failed]
        for attempt in range(2):
            if not self._logged_in:
                await self._login()
            try:
                out: list[tuple[str, object]] = []
                for endpoint in self._profile.http.endpoints:
                    path = endpoint.path.replace("{site}", self.site)
                    try:
                        out.append((endpoint.key, await self._get_network(path)))
                    except DeviceError as exc:
                        # One endpoint failing alone (an older Network version without it)
                        # does not cost the others; a dead controller or a refused account does.
                        if exc.kind != "bad_response" or not out or "no site" in exc.message:
                            raise
                        out.append((endpoint.key, FetchFailed(exc.kind, exc.message)))
                return out
            except _SessionExpired:
                self._logged_in = False  # the session ran out: log in again and retry once
                if attempt:
                    break
        raise DeviceError(
            "auth_failed",
            f"UniFi at {self._base} ended the session again right after a fresh login; "
            "check that the account is not logged in elsewhere with a session limit",
        )

    # -- sessions ---------------------------------------------------------------------------

    async def _detect(self) -> Mode:
        response = await self._request("GET", self._base + "/")
        if response.status_code == 200:
            return "os"
        if response.is_redirect or response.status_code in (401, 404):
            return "classic"
        raise DeviceError(
            "bad_response",
            f"{self._base} does not look like UniFi Network (GET / answered "
            f"HTTP {response.status_code}); check the address and port (8443 for a classic "
            "controller, 443 for a UniFi OS console)",
        )

    async def _login(self) -> None:
        if self.mode is None:
            self.mode = await self._detect()
        path = "/api/auth/login" if self.mode == "os" else "/api/login"
        body = {"username": self._username, "password": self._password, "rememberMe": True}
        self._client.cookies.clear()
        response = await self._request("POST", self._base + path, json=body)
        if response.status_code == 499:
            raise DeviceError(
                "auth_failed",
                "UniFi asks this account for a second factor (MFA); use a local account "
                "without MFA, or an API key (integration API)",
            )
        if response.status_code == 429:
            raise DeviceError(
                "auth_failed",
                "UniFi refuses logins for now: too many attempts; wait before trying again",
            )
        if response.status_code in (400, 401, 403):
            raise DeviceError(
                "auth_failed",
                f"UniFi at {self._base} refused the username or password "
                f"(HTTP {response.status_code}{_meta_msg(response)}); check the local account",
            )
        if response.status_code >= 300:
            raise DeviceError(
                "bad_response",
                f"UniFi login at {self._base}{path} answered HTTP {response.status_code}",
            )
        self._csrf = response.headers.get("x-csrf-token") or self._csrf
        self._logged_in = True
        self.logins += 1

    async def _get_network(self, path: str) -> object:
        prefix = "/proxy/network" if self.mode == "os" else ""
        headers = {"x-csrf-token": self._csrf} if self._csrf else {}
        response = await self._request("GET", self._base + prefix + path, headers=headers)
        updated = response.headers.get("x-updated-csrf-token")
        if updated:
            self._csrf = updated
        body = _json(response)
        msg = _msg(body)
        if response.status_code == 401 or msg == "api.err.LoginRequired":
            raise _SessionExpired()
        if msg == "api.err.NoSiteContext" or (response.status_code == 404 and "/s/" in path):
            raise DeviceError(
                "bad_response",
                f"UniFi has no site {self.site!r}; pass the site's short name (in the "
                "controller's URL, /manage/site/<name>/) with --site or site = ...",
            )
        if msg == "api.err.NoPermission" or response.status_code == 403:
            raise DeviceError(
                "auth_failed",
                f"the UniFi account may not read site {self.site!r}; give it at least "
                "read-only (View Only) access to the site",
            )
        if response.status_code >= 400 or msg:
            raise DeviceError(
                "bad_response",
                f"UniFi {path} answered HTTP {response.status_code}" + (f" ({msg})" if msg else ""),
            )
        return body

    # -- integration API --------------------------------------------------------------------

    async def _integration_get(self, path: str) -> Any:
        url = f"{self._base}/proxy/network/integration/v1{path}"
        response = await self._request("GET", url)
        if response.status_code in (401, 403):
            raise DeviceError(
                "auth_failed",
                f"UniFi at {self._base} refused the API key (HTTP {response.status_code}); "
                "create one under Settings > Control Plane > Integrations",
            )
        if response.status_code == 404 and path.startswith("/sites?"):
            raise DeviceError(
                "bad_response",
                f"{self._base} has no integration API (it needs UniFi Network 9.0+ on a UniFi OS "
                "console); use a username and password instead of an API key",
            )
        if response.status_code >= 400:
            raise DeviceError(
                "bad_response", f"UniFi integration API {path} answered HTTP {response.status_code}"
            )
        return _json(response)

    async def _paged(self, path: str) -> list[Any]:
        items: list[Any] = []
        offset = 0
        while True:
            page = await self._integration_get(f"{path}?offset={offset}&limit={_PAGE}")
            data = page.get("data", []) if isinstance(page, dict) else []
            items += data
            total = page.get("totalCount", len(items)) if isinstance(page, dict) else len(items)
            offset += len(data)
            if not data or offset >= int(total):
                return items

    async def _integration_devices(
        self,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, object]]]:
        """The site's devices, each with its latest statistics; and the requests that failed.

        A device whose statistics request fails is still listed (its state, without
        statistics): one device does not stop the poll.
        """
        if self._site_id is None:
            sites = await self._paged("/sites")
            for s in sites:
                if self.site in (s.get("internalReference"), s.get("name"), s.get("id")):
                    self._site_id = str(s["id"])
                    break
            else:
                names = ", ".join(str(s.get("internalReference") or s.get("name")) for s in sites)
                raise DeviceError(
                    "bad_response",
                    f"UniFi has no site {self.site!r}; its sites are: {names or 'none'}",
                )
        base = f"/sites/{self._site_id}/devices"
        devices = await self._paged(base)
        limit = asyncio.Semaphore(_FANOUT)

        failed: list[tuple[str, object]] = []

        async def with_statistics(device: dict[str, Any]) -> dict[str, Any]:
            path = f"{base}/{device.get('id')}/statistics/latest"
            try:
                async with limit:
                    stats = await self._integration_get(path)
            except DeviceError as exc:
                if exc.kind == "auth_failed":
                    raise
                name = device.get("name") or device.get("id")
                failed.append((f"{INTEGRATION_DEVICES}/{name}", FetchFailed(exc.kind, exc.message)))
                stats = {}
            return {**device, "statistics": stats if isinstance(stats, dict) else {}}

        listed = await asyncio.gather(*(with_statistics(d) for d in devices if isinstance(d, dict)))
        return list(listed), failed

    # -- plumbing ---------------------------------------------------------------------------

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._client.request(method, url, **kwargs)
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise DeviceError(
                    "tls_untrusted",
                    f"the TLS certificate of {self._base} is not trusted (UniFi consoles ship a "
                    "self-signed one); pass --insecure (insecure = true) only if you accept "
                    "the risk",
                ) from None
            raise DeviceError("unreachable", f"cannot connect to {self._base}: {exc}") from None
        except httpx.TimeoutException:
            raise DeviceError("timeout", f"{url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise DeviceError("unreachable", f"{url}: {exc}") from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _msg(body: Any) -> str:
    """The error of a ``{"meta": {"rc": "error", "msg": ...}}`` envelope, else ''."""
    if isinstance(body, dict) and isinstance(body.get("meta"), dict):
        meta = body["meta"]
        if meta.get("rc") == "error":
            return str(meta.get("msg") or "error")
    return ""


def _meta_msg(response: httpx.Response) -> str:
    msg = _msg(_json(response))
    return f", {msg}" if msg else ""
