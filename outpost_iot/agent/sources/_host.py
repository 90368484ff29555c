"""The gateway itself: cpu, memory, disks, network, load, uptime, temperatures (psutil).

psutil's numbers are gathered into a raw snapshot, one payload per section; the ``host``
firmware profile maps them to readings like any device (and computes the network rates), so a
board with other needs gets its own profile folder rather than new code.
"""

from __future__ import annotations

import socket
from typing import Any

import psutil

from outpost_iot.agent._clock import Clock
from outpost_iot.agent._collection import Collection
from outpost_iot.agent.profiles import Mapper, find_profile

# Pseudo and transient file systems say nothing about the gateway's storage.
_SKIP_FSTYPES = {"squashfs", "tmpfs", "devtmpfs", "overlay", "proc", "sysfs", "ramfs"}


def host_snapshot(now_s: float) -> list[tuple[str, Any]]:
    """The raw host sections: ``[(section, payload)]`` as the ``host`` profile expects them."""
    cpu = psutil.cpu_times_percent(interval=None)
    out: list[tuple[str, Any]] = [
        (
            "cpu",
            {
                "usage_percent": psutil.cpu_percent(interval=None),
                "user_percent": cpu.user,
                "system_percent": cpu.system,
                "iowait_percent": getattr(cpu, "iowait", 0.0),
                "count": psutil.cpu_count() or 0,
            },
        )
    ]
    mem = psutil.virtual_memory()
    swap = psutil.swap_memory()
    out.append(
        (
            "memory",
            {
                "total": mem.total,
                "available": mem.available,
                "used": mem.used,
                "percent": mem.percent,
                "swap_used": swap.used,
            },
        )
    )
    disks: dict[str, Any] = {}
    for part in psutil.disk_partitions(all=False):
        if part.fstype in _SKIP_FSTYPES:
            continue
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue  # a mount that vanished or is not readable
        disks[part.mountpoint] = {
            "fstype": part.fstype,
            "total": usage.total,
            "used": usage.used,
            "free": usage.free,
            "percent": usage.percent,
        }
    out.append(("disks", disks))
    out.append(
        (
            "net",
            {nic: c._asdict() for nic, c in psutil.net_io_counters(pernic=True).items()},
        )
    )
    load1, load5, load15 = psutil.getloadavg()
    boot = psutil.boot_time()
    out.append(
        (
            "system",
            {
                "load1": load1,
                "load5": load5,
                "load15": load15,
                "uptime_s": max(0.0, now_s - boot),
                "boot_time_s": boot,
            },
        )
    )
    temperatures: dict[str, Any] = {}
    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is not None:
        for chip, entries in sensors().items():
            for i, entry in enumerate(entries):
                label = entry.label or str(i)
                temperatures[f"{chip}/{label}"] = {
                    "sensor": chip,
                    "label": label,
                    "celsius": entry.current,
                }
    out.append(("temperatures", temperatures))
    return out


class HostSource:
    """Readings about the gateway host, through psutil and a host profile."""

    def __init__(self, *, name: str, interval: float, clock: Clock, profile: str = "host") -> None:
        self.name = name
        self.interval = interval
        self._clock = clock
        self.mapper = Mapper(
            find_profile(profile), variables={"source": name, "host": socket.gethostname()}
        )
        # The first cpu_percent call only primes the counters and returns 0.0.
        psutil.cpu_percent(interval=None)
        psutil.cpu_times_percent(interval=None)

    def collect(self) -> Collection:
        ts = self._clock.wall_ns()
        out = Collection()
        for key, payload in host_snapshot(ts / 1e9):
            got = self.mapper.apply(key, payload, ts)
            out.readings += got.readings
            out.events += got.events
        return out
