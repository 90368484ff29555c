"""HTTP servers that answer like the devices (pfSense REST API, Frigate, UniFi Network), for tests
and the demo.

A simulator can be told to hang (accept connections and never answer), like a device that died
half way, or to answer again.
"""

from __future__ import annotations

import json
import math
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

Route = Callable[[], Any]


def pfsense_routes() -> dict[str, Route]:
    started = time.time()

    def envelope(data: Any) -> dict[str, Any]:
        return {"code": 200, "status": "ok", "response_id": "SUCCESS", "message": "", "data": data}

    def system() -> dict[str, Any]:
        t = time.time() - started
        load = round(0.2 + 0.1 * math.sin(t / 60), 2)
        return envelope(
            {
                "platform": "Netgate 2100 (simulated)",
                "temp_c": 48.5,
                "cpu_load_avg": [load, 0.18, 0.15],
                "cpu_count": 2,
                "cpu_usage": round(load / 2 * 100, 1),
                "mbuf_usage": 1.2,
                "mem_usage": 34.0,
                "swap_usage": 0.0,
                "disk_usage": 8.0,
            }
        )

    def gateways() -> dict[str, Any]:
        return envelope(
            [
                {
                    "name": "WAN_DHCP",
                    "srcip": "198.51.100.7",
                    "monitorip": "198.51.100.1",
                    "delay": 11.2,
                    "stddev": 1.4,
                    "loss": 0.0,
                    "status": "online",
                    "substatus": "none",
                }
            ]
        )

    def states() -> dict[str, Any]:
        # A stock firewall: nobody set a limit, so maximumstates is null (as on real pfSense).
        return envelope(
            {"maximumstates": None, "defaultmaximumstates": 398000, "currentstates": 1234}
        )

    def interfaces() -> dict[str, Any]:
        t = time.time() - started
        return envelope(
            [
                {
                    "name": "wan",
                    "descr": "WAN",
                    "hwif": "igc0",
                    "enable": False,  # as real pfSense reports for a WAN that is up
                    "status": "up",
                    "inerrs": 0,
                    "outerrs": 0,
                    "collisions": 0,
                    "inbytes": int(91_234_567_890 + 1_250_000 * t),
                    "outbytes": int(12_345_678_901 + 250_000 * t),
                    "media": "1000baseT <full-duplex> ",
                },
                {
                    "name": "lan",
                    "descr": "LAN",
                    "hwif": "igc1",
                    "enable": True,
                    "status": "up",
                    "inerrs": 0,
                    "outerrs": 0,
                    "collisions": 0,
                    "inbytes": int(5_000_000_000 + 250_000 * t),
                    "outbytes": int(60_000_000_000 + 1_250_000 * t),
                    "media": "1000baseT <full-duplex>",
                },
            ]
        )

    return {
        "/api/v2/status/system": system,
        "/api/v2/status/gateways": gateways,
        "/api/v2/firewall/states/size": states,
        "/api/v2/status/interfaces": interfaces,
    }


class DeviceSimulator:
    """A threaded HTTP server on 127.0.0.1 serving ``routes`` as JSON."""

    def __init__(
        self, routes: dict[str, Route], *, api_key: str | None = None, header: str = "X-API-Key"
    ) -> None:
        self.routes = routes
        self.api_key = api_key
        self.hanging = threading.Event()
        self.requests = 0
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                sim.requests += 1
                if sim.hanging.is_set():
                    sim.hanging_wait()
                    return
                if sim.api_key is not None and self.headers.get(header) != sim.api_key:
                    self._send(
                        401,
                        {"code": 401, "status": "unauthorized", "message": "Authentication failed"},
                    )
                    return
                route = sim.routes.get(self.path)
                if route is None:
                    self._send(404, {"code": 404, "status": "not found", "message": self.path})
                    return
                self._send(200, route())

            def _send(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._stop = threading.Event()

    def hanging_wait(self) -> None:
        while self.hanging.is_set() and not self._stop.is_set():
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DeviceSimulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


# -- UniFi Network ---------------------------------------------------------------------------


class UnifiSimulator:
    """Answers like UniFi Network: a classic controller (``mode="classic"``) or a UniFi OS
    console (``mode="os"``, which also serves the integration API to ``api_key``).

    Sessions can be expired (:meth:`expire_sessions`) the way a controller restart or the
    session lifetime ends them; a device can be disconnected (:meth:`set_state`). With
    ``tls_dir`` it serves HTTPS with a certificate no client trusts, like a real console.
    """

    def __init__(
        self,
        *,
        mode: str = "os",
        username: str = "outpost-ro",
        password: str = "unifi-pass-123",
        api_key: str | None = None,
        site: str = "default",
        tls_dir: Path | None = None,
    ) -> None:
        if mode not in ("classic", "os"):
            raise ValueError("mode is 'classic' or 'os'")
        self.mode = mode
        self.username = username
        self.password = password
        self.api_key = api_key
        self.site = site
        self.site_id = str(uuid.uuid4())
        self.sessions: dict[str, str] = {}  # cookie → csrf token
        self.logins = 0
        self.expired_requests = 0
        self.started = time.time()
        self.devices = _unifi_devices()
        self.failing_statistics: set[str] = set()  # device ids whose statistics answer 500
        self._lock = threading.Lock()
        sim = self
        cookie_name = "TOKEN" if mode == "os" else "unifises"
        prefix = "/proxy/network" if mode == "os" else ""

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds a connection may stay silent

            def setup(self) -> None:
                if isinstance(self.request, ssl.SSLSocket):
                    self.request.settimeout(5)
                    self.request.do_handshake()  # a failure ends this connection only
                super().setup()

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                path = url.path
                if path == "/":
                    if sim.mode == "os":
                        self._send(200, None, raw=b"<html>UniFi OS</html>", ctype="text/html")
                    else:
                        self._send(302, None, headers={"Location": "/manage"})
                    return
                if sim.mode == "os" and path.startswith("/proxy/network/integration/v1/"):
                    self._integration(path.removeprefix("/proxy/network/integration/v1"), url)
                    return
                if not path.startswith(prefix + "/api/"):
                    self._send(404, {"error": "not found"})
                    return
                if not self._session_ok():
                    sim.expired_requests += 1
                    if sim.mode == "os":
                        self._send(401, {})
                    else:
                        self._send(401, _unifi_error("api.err.LoginRequired"))
                    return
                self._network(path.removeprefix(prefix))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    body = {}
                login = "/api/auth/login" if sim.mode == "os" else "/api/login"
                if self.path != login:
                    self._send(404, {"error": "not found"})
                    return
                if body.get("username") != sim.username or body.get("password") != sim.password:
                    if sim.mode == "os":
                        self._send(
                            401,
                            {"code": "AUTHENTICATION_FAILED_INVALID_CREDENTIALS", "errors": []},
                        )
                    else:
                        self._send(400, _unifi_error("api.err.Invalid"))
                    return
                cookie, csrf = secrets.token_hex(16), secrets.token_hex(16)
                with sim._lock:
                    sim.sessions[cookie] = csrf
                    sim.logins += 1
                headers = {"Set-Cookie": f"{cookie_name}={cookie}; Path=/; HttpOnly"}
                if sim.mode == "os":
                    headers["X-CSRF-Token"] = csrf
                    self._send(200, {"username": sim.username, "isOwner": False}, headers=headers)
                else:
                    self._send(200, {"meta": {"rc": "ok"}, "data": []}, headers=headers)

            def _session_ok(self) -> bool:
                jar = SimpleCookie(self.headers.get("Cookie") or "")
                morsel = jar.get(cookie_name)
                if morsel is None or morsel.value not in sim.sessions:
                    return False
                if sim.mode == "os":
                    return self.headers.get("x-csrf-token") == sim.sessions[morsel.value]
                return True

            def _network(self, path: str) -> None:
                parts = path.split("/")  # "", "api", "s", site, "stat", what
                if len(parts) != 6 or parts[2] != "s" or parts[4] != "stat":
                    self._send(404, _unifi_error("api.err.NotFound"))
                    return
                if parts[3] != sim.site:
                    self._send(400, _unifi_error("api.err.NoSiteContext"))
                    return
                what = parts[5]
                if what == "device":
                    data = sim.stat_device()
                elif what == "health":
                    data = sim.stat_health()
                else:
                    self._send(404, _unifi_error("api.err.NotFound"))
                    return
                self._send(200, {"meta": {"rc": "ok"}, "data": data})

            def _integration(self, path: str, url: Any) -> None:
                if sim.api_key is None or self.headers.get("X-API-KEY") != sim.api_key:
                    self._send(401, {"statusCode": 401, "statusName": "UNAUTHORIZED"})
                    return
                query = parse_qs(url.query)
                offset = int(query.get("offset", ["0"])[0])
                limit = int(query.get("limit", ["25"])[0])
                if path == "/sites":
                    items: list[Any] = [
                        {"id": sim.site_id, "internalReference": sim.site, "name": "Default"}
                    ]
                    self._send(200, _page(items, offset, limit))
                    return
                base = f"/sites/{sim.site_id}/devices"
                if path == base:
                    self._send(200, _page(sim.integration_devices(), offset, limit))
                    return
                if path.startswith(base + "/") and path.endswith("/statistics/latest"):
                    device_id = path[len(base) + 1 :].split("/")[0]
                    if device_id in sim.failing_statistics:
                        self._send(500, {"statusCode": 500, "statusName": "INTERNAL_ERROR"})
                        return
                    stats = sim.integration_statistics(device_id)
                    if stats is None:
                        self._send(404, {"statusCode": 404, "statusName": "NOT_FOUND"})
                    else:
                        self._send(200, stats)
                    return
                self._send(404, {"statusCode": 404, "statusName": "NOT_FOUND"})

            def _send(
                self,
                status: int,
                body: Any,
                *,
                raw: bytes | None = None,
                ctype: str = "application/json",
                headers: dict[str, str] | None = None,
            ) -> None:
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls_dir is not None:
            cert, key = _self_signed(tls_dir)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            # The handshake happens in each connection's own thread (Handler.setup): a client
            # that connects and never speaks TLS must not block the accepting thread.
            self._server.socket = context.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> UnifiSimulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def expire_sessions(self) -> None:
        """Every session ends, as after the session lifetime or a controller restart."""
        with self._lock:
            self.sessions.clear()

    def set_state(self, name: str, state: int) -> None:
        """A device's ``state`` (0 disconnected, 1 connected, …)."""
        for d in self.devices:
            if d["name"] == name:
                d["state"] = state

    def _elapsed(self) -> float:
        return time.time() - self.started

    def stat_device(self) -> list[dict[str, Any]]:
        t = self._elapsed()
        out = []
        for d in self.devices:
            rate = d["rate"] if d["state"] == 1 else 0
            entry = {k: v for k, v in d.items() if k not in ("rate", "id")}
            entry.update(
                {
                    "uptime": int(d["uptime0"] + t),
                    "tx_bytes": int(d["bytes0"] + rate * t),
                    "rx_bytes": int(d["bytes0"] * 3 + rate * 4 * t),
                    "system-stats": {
                        "cpu": f"{8 + 4 * math.sin(t / 30):.1f}",
                        "mem": "41.3",
                        "uptime": str(int(d["uptime0"] + t)),
                    },
                }
            )
            entry.pop("uptime0")
            entry.pop("bytes0")
            if d["type"] in ("udm", "ugw"):
                entry["uplink"] = {
                    "tx_bytes": int(d["bytes0"] + rate * t),
                    "rx_bytes": int(d["bytes0"] * 5 + rate * 5 * t),
                    "speed": 1000,
                    "up": True,
                    "latency": 7,
                }
            out.append(entry)
        return out

    def stat_health(self) -> list[dict[str, Any]]:
        aps = [d for d in self.devices if d["type"] == "uap"]
        return [
            {
                "subsystem": "wlan",
                "status": "ok" if all(d["state"] == 1 for d in aps) else "warning",
                "num_user": 14,
                "num_ap": len(aps),
                "num_adopted": len(aps),
                "num_disconnected": sum(1 for d in aps if d["state"] != 1),
                "tx_bytes-r": 125000,
                "rx_bytes-r": 40000,
            },
            {
                "subsystem": "wan",
                "status": "ok",
                "wan_ip": "198.51.100.7",
                "tx_bytes-r": 250000,
                "rx_bytes-r": 1250000,
            },
            {
                "subsystem": "www",
                "status": "ok",
                "latency": 12,
                "drops": 0,
                "xput_up": 95.2,
                "xput_down": 480.1,
            },
            {"subsystem": "lan", "status": "ok", "num_user": 9, "num_sw": 1},
            {"subsystem": "vpn", "status": "unknown"},
        ]

    def integration_devices(self) -> list[dict[str, Any]]:
        return [
            {
                "id": d["id"],
                "name": d["name"],
                "model": d["model"],
                "macAddress": d["mac"],
                "ipAddress": d["ip"],
                "state": "ONLINE" if d["state"] == 1 else "OFFLINE",
                "features": ["switching"] if d["type"] == "usw" else [],
            }
            for d in self.devices
        ]

    def integration_statistics(self, device_id: str) -> dict[str, Any] | None:
        t = self._elapsed()
        for d in self.devices:
            if d["id"] == device_id:
                return {
                    "uptimeSec": int(d["uptime0"] + t),
                    "lastHeartbeatAt": "2026-11-22T01:00:00Z",
                    "nextHeartbeatAt": "2026-11-22T01:00:10Z",
                    "loadAverage1Min": 0.31,
                    "loadAverage5Min": 0.27,
                    "loadAverage15Min": 0.22,
                    "cpuUtilizationPct": 8.5,
                    "memoryUtilizationPct": 41.3,
                    "uplink": {"txRateBps": d["rate"] * 8, "rxRateBps": d["rate"] * 32},
                }
        return None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up mid-handshake (an untrusted certificate) is not news


def _unifi_devices() -> list[dict[str, Any]]:
    base = [
        ("gw-main", "UDMPRO", "udm", "74:ac:b9:00:00:01", "192.168.1.1", 1_250_000),
        ("sw-core", "US24P250", "usw", "74:ac:b9:00:00:02", "192.168.1.2", 2_500_000),
        ("ap-lobby", "U6PRO", "uap", "74:ac:b9:00:00:03", "192.168.1.3", 625_000),
    ]
    return [
        {
            "id": str(uuid.uuid5(uuid.NAMESPACE_OID, mac)),
            "name": name,
            "model": model,
            "type": kind,
            "mac": mac,
            "ip": ip,
            "version": "7.1.66",
            "state": 1,
            "num_sta": 7 if kind == "uap" else 0,
            "general_temperature": 52 if kind != "uap" else None,
            "uptime0": 86_400 * (i + 2),
            "bytes0": 10**9 * (i + 1),
            "rate": rate,
        }
        for i, (name, model, kind, mac, ip, rate) in enumerate(base)
    ]


def _unifi_error(msg: str) -> dict[str, Any]:
    return {"meta": {"rc": "error", "msg": msg}, "data": []}


def _page(items: list[Any], offset: int, limit: int) -> dict[str, Any]:
    chunk = items[offset : offset + limit]
    return {
        "offset": offset,
        "limit": limit,
        "count": len(chunk),
        "totalCount": len(items),
        "data": chunk,
    }


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 from a throwaway CA that no client trusts."""
    from outpost_iot.provisioning._ca import CertificateAuthority

    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "device.pem", directory / "device.key"
    if not cert.exists():
        ca = CertificateAuthority.create("UniFi simulator (untrusted)")
        ca.issue_to_files(
            "unifi.local", cert, key, server=True, ip_addresses=("127.0.0.1",), days=30
        )
    return cert, key
