"""What a reconnect storm costs the broker: mTLS connects per second and CPU per connect.

.venv/bin/python -m bench.broker_connects [--seconds 20] [--runs 3] [--workers 2] [--concurrency 50]

A Mosquitto configured as ``outpost-collector broker init`` writes it (mTLS, ECDSA P-256
certificates, the dynamic-security plugin with one gateway on its roster) takes full
connections from worker processes: TCP, the TLS handshake with the gateway's certificate, MQTT 5
CONNECT and CONNACK, DISCONNECT. The broker's own CPU time per connection (from
``/proc/<pid>/stat``) is the figure that scales: one broker core handles ``1 / cpu`` connects a
second, whatever the clients cost. The clients run on the same machine and take CPU from it, so
the connects per second measured are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import ssl
import struct
import tempfile
import time
from pathlib import Path

from bench._common import report
from outpost_iot.collector import issue_gateway_identity
from outpost_iot.dev._processes import Mosquitto

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _connect_packet(client_id: str) -> bytes:
    cid = client_id.encode()
    variable = b"\x00\x04MQTT\x05\x02" + struct.pack("!H", 30) + b"\x00"
    payload = struct.pack("!H", len(cid)) + cid
    body = variable + payload
    return b"\x10" + bytes([len(body)]) + body  # bodies here are under 128 bytes


async def _one(port: int, ctx: ssl.SSLContext, client_id: str) -> bool:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 10
        )
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(_connect_packet(client_id))
        head = await asyncio.wait_for(reader.readexactly(4), 10)
        ok = head[0] == 0x20 and head[3] == 0  # CONNACK, reason code success
        writer.write(b"\xe0\x00")  # DISCONNECT
        await writer.drain()
        return ok
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()


async def _worker_main(
    port: int, identity: tuple[str, str, str], seconds: float, conc: int, n: int
) -> int:
    ca, cert, key = identity
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    done = 0
    end = time.monotonic() + seconds

    async def loop(slot: int) -> None:
        nonlocal done
        k = 0
        while time.monotonic() < end:
            k += 1
            if await _one(port, ctx, f"w{n}-{slot}-{k}"):
                done += 1

    await asyncio.gather(*(loop(i) for i in range(conc)))
    return done


def _worker(args: tuple[int, tuple[str, str, str], float, int, int]) -> int:
    return asyncio.run(_worker_main(*args))


def run_once(seconds: float, workers: int, concurrency: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        broker = Mosquitto(root / "broker")
        broker.start()
        try:
            ca, cert, key = issue_gateway_identity(root / "broker", "gw-storm", root / "id")
            broker.register("gw-storm")
            identity = (str(ca), str(cert), str(key))
            cpu0, t0 = _cpu_s(broker.pid), time.monotonic()
            with multiprocessing.Pool(workers) as pool:
                counts = pool.map(
                    _worker,
                    [(broker.port, identity, seconds, concurrency, i) for i in range(workers)],
                )
            cpu1, t1 = _cpu_s(broker.pid), time.monotonic()
        finally:
            broker.stop()
    total = sum(counts)
    return total / (t1 - t0), (cpu1 - cpu0) / max(total, 1) * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=50)
    args = p.parse_args()
    results = [run_once(args.seconds, args.workers, args.concurrency) for _ in range(args.runs)]
    report(
        "broker.mtls_connects_per_s",
        [r[0] for r in results],
        "connects/s",
        note="clients on the same machine: a floor",
        workers=args.workers,
        concurrency=args.concurrency,
    )
    report("broker.cpu_per_connect", [r[1] for r in results], "ms of broker CPU")


if __name__ == "__main__":
    main()
