"""HTTP servers that answer like the devices (pfSense REST API, Frigate), for tests and the demo.

A simulator can be told to hang (accept connections and never answer), like a device that died
half way, or to answer again.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
        return envelope(
            {"maximumstates": 398000, "defaultmaximumstates": 398000, "currentstates": 1234}
        )

    return {
        "/api/v2/status/system": system,
        "/api/v2/status/gateways": gateways,
        "/api/v2/firewall/states/size": states,
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
