"""HTTP devices (pfSense REST API, Frigate /api/stats): GET the profile's endpoints."""

from __future__ import annotations

import ssl

import httpx

from outpost_iot.agent.profiles import Profile
from outpost_iot.agent.sources._polling import (
    DeviceError,
    FetchFailed,
    default_tls_context,
    device_http_client,
)


class HttpDeviceClient:
    """GETs each endpoint of the profile; errors come back in device terms."""

    def __init__(
        self,
        *,
        profile: Profile,
        base_url: str,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        insecure: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self._profile = profile
        self._base = base_url.rstrip("/")
        headers = {"Accept": "application/json"}
        settings = profile.http
        if settings.auth == "api_key":
            if not api_key:
                raise DeviceError(
                    "auth_failed", f"profile {profile.name} needs an API key (api_key / --api-key)"
                )
            headers[settings.api_key_header] = api_key
        auth = None
        if settings.auth == "basic":
            if not username or password is None:
                raise DeviceError(
                    "auth_failed", f"profile {profile.name} needs a username and password"
                )
            auth = httpx.BasicAuth(username, password)
        verify: ssl.SSLContext | bool = default_tls_context()
        if insecure:
            verify = False  # the operator accepted a self-signed device certificate
        self._client = device_http_client(
            headers=headers, auth=auth, verify=verify, timeout=timeout
        )

    async def fetch(self) -> list[tuple[str, object]]:
        """Every endpoint; one that fails alone is a :class:`FetchFailed` in the list.

        When none answers, or the device refuses the credentials, the poll fails.
        """
        out: list[tuple[str, object]] = []
        first_error: DeviceError | None = None
        for endpoint in self._profile.http.endpoints:
            try:
                out.append((endpoint.key, await self._get(endpoint.path)))
            except DeviceError as exc:
                if exc.kind in ("auth_failed", "tls_untrusted"):
                    raise
                answered = any(not isinstance(p, FetchFailed) for _, p in out)
                if exc.kind in ("unreachable", "timeout") and not answered:
                    raise  # the device is down: do not wait for each endpoint to time out
                first_error = first_error or exc
                out.append((endpoint.key, FetchFailed(exc.kind, exc.message)))
        if first_error is not None and all(isinstance(p, FetchFailed) for _, p in out):
            raise first_error
        return out

    async def _get(self, path: str) -> object:
        url = self._base + path
        try:
            response = await self._client.get(url)
        except httpx.ConnectError as exc:
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                raise DeviceError(
                    "tls_untrusted",
                    f"the TLS certificate of {self._base} is not trusted; pass --insecure "
                    "(insecure = true) only if you accept the risk",
                ) from None
            raise DeviceError("unreachable", f"cannot connect to {self._base}: {exc}") from None
        except httpx.TimeoutException:
            raise DeviceError("timeout", f"{url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise DeviceError("unreachable", f"{url}: {exc}") from None
        if response.status_code in (401, 403):
            raise DeviceError(
                "auth_failed",
                f"{url} refused the credentials (HTTP {response.status_code}); check the API key, username and password",
            )
        if response.status_code >= 400:
            raise DeviceError("bad_response", f"{url} answered HTTP {response.status_code}")
        try:
            body: object = response.json()
        except ValueError:
            body = response.text
        return body

    async def aclose(self) -> None:
        await self._client.aclose()
