"""The gateway itself: cpu, memory, disks, network, load, uptime, temperatures (psutil)."""

from __future__ import annotations

import socket

import psutil

from agent._clock import Clock
from agent.sources._base import Collection
from wire import Reading

# Pseudo and transient file systems say nothing about the gateway's storage.
_SKIP_FSTYPES = {"squashfs", "tmpfs", "devtmpfs", "overlay", "proc", "sysfs", "ramfs"}


class HostSource:
    """Readings about the gateway host, through psutil."""

    def __init__(self, *, name: str, interval: float, clock: Clock) -> None:
        self.name = name
        self.interval = interval
        self._clock = clock
        self._host = socket.gethostname()
        # The first cpu_percent call only primes the counters and returns 0.0.
        psutil.cpu_percent(interval=None)

    def collect(self) -> Collection:
        ts = self._clock.wall_ns()
        tags = {"source": self.name, "host": self._host}
        out: list[Reading] = []

        def add(measurement: str, fields: dict[str, float | int], **extra: str) -> None:
            if fields:
                out.append(
                    Reading(measurement=measurement, tags={**tags, **extra}, fields=fields, ts=ts)
                )

        cpu = psutil.cpu_times_percent(interval=None)
        add(
            "cpu",
            {
                "usage_percent": psutil.cpu_percent(interval=None),
                "user_percent": cpu.user,
                "system_percent": cpu.system,
                "iowait_percent": getattr(cpu, "iowait", 0.0),
                "count": psutil.cpu_count() or 0,
            },
        )
        mem = psutil.virtual_memory()
        swap = psutil.swap_memory()
        add(
            "mem",
            {
                "total_bytes": mem.total,
                "available_bytes": mem.available,
                "used_bytes": mem.used,
                "used_percent": mem.percent,
                "swap_used_bytes": swap.used,
            },
        )
        for part in psutil.disk_partitions(all=False):
            if part.fstype in _SKIP_FSTYPES:
                continue
            try:
                usage = psutil.disk_usage(part.mountpoint)
            except OSError:
                continue  # a mount that vanished or is not readable
            add(
                "disk",
                {
                    "total_bytes": usage.total,
                    "used_bytes": usage.used,
                    "free_bytes": usage.free,
                    "used_percent": usage.percent,
                },
                path=part.mountpoint,
                fstype=part.fstype,
            )
        for nic, c in psutil.net_io_counters(pernic=True).items():
            add(
                "net",
                {
                    "bytes_sent": c.bytes_sent,
                    "bytes_recv": c.bytes_recv,
                    "packets_sent": c.packets_sent,
                    "packets_recv": c.packets_recv,
                    "errin": c.errin,
                    "errout": c.errout,
                    "dropin": c.dropin,
                    "dropout": c.dropout,
                },
                interface=nic,
            )
        load1, load5, load15 = psutil.getloadavg()
        boot = psutil.boot_time()
        add(
            "system",
            {
                "load1": load1,
                "load5": load5,
                "load15": load15,
                "uptime_s": max(0.0, ts / 1e9 - boot),
                "boot_time_s": boot,
            },
        )
        temps = getattr(psutil, "sensors_temperatures", None)
        if temps is not None:
            for chip, entries in temps().items():
                for i, entry in enumerate(entries):
                    add(
                        "temperature",
                        {"celsius": entry.current},
                        sensor=chip,
                        label=entry.label or str(i),
                    )
        return Collection(readings=out)
