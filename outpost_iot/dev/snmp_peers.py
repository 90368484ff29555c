"""Real SNMP agents for the tests and the demo: net-snmp's ``snmpd`` and ``snmpsim``.

Both run as their own processes on a free loopback UDP port, with their own config and data
directories, so a test never depends on an agent the machine happens to run.

- :class:`Snmpd` is net-snmp with a v2c community and an SNMPv3 user, reporting the host it
  runs on, plus one test counter (``1.3.6.1.4.1.8072.9999.1.0``, a Counter32) whose value the
  test sets, to drive a counter across its 32-bit wrap.
- :class:`Snmpsim` replays a recorded walk. :func:`pfsense_snmprec` writes one that answers like
  pfSense's bsnmpd (MIB-II, IF-MIB, HOST-RESOURCES, UCD and the PF MIB).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from outpost_iot.dev._processes import spawn, stop

TEST_COUNTER = "1.3.6.1.4.1.8072.9999.1.0"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_snmpd() -> str | None:
    return shutil.which("snmpd") or next(
        (p for p in ("/usr/sbin/snmpd", "/usr/local/sbin/snmpd") if Path(p).exists()), None
    )


def _wait_for_log(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"
    raise RuntimeError(f"{path.parent.name}: did not start (no {text!r} in its log): {tail}")


_COUNTER_SCRIPT = """#!/bin/sh
# net-snmp 'pass_persist' protocol (answers each request; plain 'pass' output is cached by
# snmpd): one Counter32 whose value is read from a file on every request.
OID=.{oid}
while read -r command; do
  case "$command" in
    PING) echo PONG ;;
    get|getnext)
      read -r asked
      if [ "$command" = get ] && [ "$asked" = "$OID" ]; then hit=1
      elif [ "$command" = getnext ] && case "$asked" in .{base}|.{base}.1) true ;; *) false ;; esac
      then hit=1
      else hit=0; fi
      if [ $hit = 1 ]; then echo "$OID"; echo counter; cat "{value_file}"; else echo NONE; fi ;;
    set) read -r _; echo not-writable ;;
    *) exit 0 ;;
  esac
done
"""


class Snmpd:
    """net-snmp's snmpd with its own config: a community and an SNMPv3 authPriv user."""

    def __init__(
        self,
        directory: Path,
        *,
        community: str = "outpost-test",
        user: str = "outpost",
        auth_protocol: str = "SHA",
        auth_key: str = "auth-key-0123",
        priv_protocol: str = "AES",
        priv_key: str = "priv-key-0123",
        sys_name: str = "snmpd-under-test",
        port: int | None = None,
    ) -> None:
        binary = find_snmpd()
        if binary is None:
            raise FileNotFoundError("snmpd is not installed (apt-get install snmpd)")
        self.binary = binary
        self.directory = directory
        self.port = port or free_udp_port()
        self.community = community
        self.user = user
        self.auth_protocol = auth_protocol
        self.auth_key = auth_key
        self.priv_protocol = priv_protocol
        self.priv_key = priv_key
        directory.mkdir(parents=True, exist_ok=True)
        self.value_file = directory / "counter-value"
        self.set_counter(0)
        script = directory / "counter.sh"
        base = TEST_COUNTER.rsplit(".", 2)[0]
        script.write_text(
            _COUNTER_SCRIPT.format(oid=TEST_COUNTER, base=base, value_file=self.value_file)
        )
        script.chmod(0o755)
        self.config = directory / "snmpd.conf"
        self.config.write_text(
            f"agentAddress udp:127.0.0.1:{self.port}\n"
            f"rocommunity {community} 127.0.0.1\n"
            f'createUser {user} {auth_protocol} "{auth_key}" {priv_protocol} "{priv_key}"\n'
            f"rouser {user} priv\n"
            f"sysName {sys_name}\n"
            "sysLocation outpost test rig\n"
            "sysContact outpost@example.invalid\n"
            f"pass_persist .{base} {script}\n"
        )
        self.log = directory / "snmpd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def set_counter(self, value: int) -> None:
        tmp = self.value_file.with_suffix(".tmp")
        tmp.write_text(f"{value}\n")
        tmp.replace(self.value_file)

    def start(self) -> None:
        self.log.unlink(missing_ok=True)
        persistent = self.directory / "persist"
        shutil.rmtree(persistent, ignore_errors=True)  # createUser is read fresh each start
        persistent.mkdir()
        env = {**os.environ, "SNMP_PERSISTENT_DIR": str(persistent), "MIBS": ""}
        command = [self.binary, "-f", "-C", "-c", str(self.config), "-Lf", str(self.log)]
        if os.geteuid() == 0:
            command += ["-u", getpass.getuser()]
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _wait_for_log(self.log, "NET-SNMP version", self._proc, 10.0)

    def stop(self) -> None:
        if self._proc is not None:
            stop(self._proc)
            self._proc = None

    def restart(self) -> None:
        """A device reboot: the agent's sysUpTime starts again from zero."""
        self.stop()
        self.start()

    @property
    def target(self) -> str:
        return f"snmp://127.0.0.1:{self.port}"


class Snmpsim:
    """snmpsim replaying ``<community>.snmprec`` files from a data directory."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        v3_user: str | None = None,
        v3_auth_key: str | None = None,
        v3_priv_key: str | None = None,
    ) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = port or free_udp_port()
        self.v3 = (v3_user, v3_auth_key, v3_priv_key)
        self.log = directory / "snmpsim.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def add(self, community: str, snmprec: str) -> None:
        (self.data / f"{community}.snmprec").write_text(snmprec)

    def start(self) -> None:
        self.log.unlink(missing_ok=True)
        command = [
            "snmpsim.commands.responder",
            f"--data-dir={self.data}",
            f"--cache-dir={self.directory / 'cache'}",
            f"--agent-udpv4-endpoint=127.0.0.1:{self.port}",
            f"--logging-method=file:{self.log}",
            "--log-level=info",
        ]
        user, auth_key, priv_key = self.v3
        if user:
            command += [f"--v3-user={user}"]
            if auth_key:
                command += [f"--v3-auth-key={auth_key}", "--v3-auth-proto=SHA"]
            if priv_key:
                command += [f"--v3-priv-key={priv_key}", "--v3-priv-proto=AES"]
        # As root (CI containers) snmpsim wants to drop to another user, who could not read
        # this private data directory; it serves only loopback test data, so let it stay.
        env = {"SNMPSIM_ALLOW_ROOT": "true"} if os.geteuid() == 0 else {}
        self._proc = spawn(command, log=self.directory / "snmpsim.stderr", env=env)
        _wait_for_log(self.log, "Listening at", self._proc, 30.0)

    def stop(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(Exception):
                stop(self._proc)
            self._proc = None

    @property
    def target(self) -> str:
        return f"snmp://127.0.0.1:{self.port}"


# Types of the .snmprec format: INTEGER, OCTET STRING, OID, IpAddress, Counter32, Gauge32,
# TimeTicks, Counter64.
_INT, _STR, _OID, _IP, _C32, _G32, _TT, _C64 = 2, 4, 6, 64, 65, 66, 67, 70


def pfsense_snmprec(*, uptime_s: float = 273_600.0, traffic: int = 0) -> str:
    """A walk of pfSense 2.7's bsnmpd (MibII, Host Resources, UCD, PF modules).

    ``traffic`` offsets the interface and PF counters, to record a later walk of the same box.
    """
    rows: list[tuple[str, int, str]] = [
        (
            "1.3.6.1.2.1.1.1.0",
            _STR,
            "pfSense fw-1.example 2.7.2-RELEASE FreeBSD 14.0-CURRENT amd64",
        ),
        ("1.3.6.1.2.1.1.2.0", _OID, "1.3.6.1.4.1.12325.1.1.2.1.1"),
        ("1.3.6.1.2.1.1.3.0", _TT, str(int(uptime_s * 100))),
        ("1.3.6.1.2.1.1.5.0", _STR, "fw-1.example"),
    ]
    interfaces = [
        # index, name, descr (alias), speed Mbps, in octets, out octets, status
        (1, "igc0", "WAN", 1000, 91_234_567_890, 12_345_678_901, 1),
        (2, "igc1", "LAN", 1000, 12_345_678_901, 91_234_567_890, 1),
        (3, "igc2", "OPT1", 1000, 0, 0, 2),
        (4, "lo0", "", 0, 1_234_567, 1_234_567, 1),
    ]
    for index, name, alias, speed, in_octets, out_octets, status in interfaces:
        busy = traffic if status == 1 and name != "lo0" else 0
        rows += [
            (f"1.3.6.1.2.1.2.2.1.2.{index}", _STR, name),
            (f"1.3.6.1.2.1.2.2.1.7.{index}", _INT, "1" if name != "igc2" else "2"),
            (f"1.3.6.1.2.1.2.2.1.8.{index}", _INT, str(status)),
            (f"1.3.6.1.2.1.2.2.1.13.{index}", _C32, str(3 * busy // 10**6)),
            (f"1.3.6.1.2.1.2.2.1.14.{index}", _C32, "0"),
            (f"1.3.6.1.2.1.2.2.1.19.{index}", _C32, "0"),
            (f"1.3.6.1.2.1.2.2.1.20.{index}", _C32, "0"),
            (f"1.3.6.1.2.1.31.1.1.1.1.{index}", _STR, name),
            (f"1.3.6.1.2.1.31.1.1.1.6.{index}", _C64, str(in_octets + busy)),
            (f"1.3.6.1.2.1.31.1.1.1.10.{index}", _C64, str(out_octets + busy // 4)),
            (f"1.3.6.1.2.1.31.1.1.1.15.{index}", _G32, str(speed)),
            (f"1.3.6.1.2.1.31.1.1.1.18.{index}", _STR, alias),
        ]
    ticks = int(uptime_s * 128)  # stathz ticks: 4 CPUs worth would be more; this is one
    rows += [
        ("1.3.6.1.4.1.2021.4.5.0", _INT, str(4 * 1024 * 1024)),  # memTotalReal KB
        ("1.3.6.1.4.1.2021.4.6.0", _INT, str(2_700_000)),  # memAvailReal KB
        ("1.3.6.1.4.1.2021.4.14.0", _INT, str(120_000)),  # memBuffer KB
        ("1.3.6.1.4.1.2021.4.15.0", _INT, str(310_000)),  # memCached KB
        ("1.3.6.1.4.1.2021.10.1.5.1", _INT, "21"),
        ("1.3.6.1.4.1.2021.10.1.5.2", _INT, "18"),
        ("1.3.6.1.4.1.2021.10.1.5.3", _INT, "15"),
        ("1.3.6.1.4.1.2021.11.9.0", _INT, "7"),
        ("1.3.6.1.4.1.2021.11.10.0", _INT, "3"),
        ("1.3.6.1.4.1.2021.11.11.0", _INT, "90"),
        ("1.3.6.1.4.1.2021.11.50.0", _C32, str(ticks * 7 // 100 % 2**32)),
        ("1.3.6.1.4.1.2021.11.51.0", _C32, "0"),
        ("1.3.6.1.4.1.2021.11.52.0", _C32, str(ticks * 3 // 100 % 2**32)),
        ("1.3.6.1.4.1.2021.11.53.0", _C32, str(ticks * 90 // 100 % 2**32)),
        ("1.3.6.1.4.1.2021.11.56.0", _C32, str(ticks // 100 % 2**32)),
    ]
    # As on a real pfSense (LibreNMS's recorded 2.3.2 walk: 593 rows): memory, file systems,
    # devfs mounts, then ~590 kernel memory zones (UMA, MALLOC), most with a size of 0.
    storage = [
        (1, "Real Memory Metrics", 4096, 1_048_576, 380_000),
        (2, "Shared Real Memory Metrics", 4096, 4002, 2785),
        (31, "/, type: ufs, dev: /dev/gpt/rootfs", 4096, 7_500_000, 600_000),
        (32, "/dev, type: devfs, dev: devfs", 512, 2, 2),
        (33, "/var/run, type: ufs, dev: /dev/md0", 4096, 871, 25),
        (34, "/var/dhcpd/dev, type: devfs, dev: devfs", 512, 2, 2),
    ]
    storage += [(35 + i, f"UMA: zone {i}", 256, 0 if i % 8 else 4096, i) for i in range(128)]
    storage += [(163 + i, f"MALLOC: type {i}", 0, 0, i % 5) for i in range(431)]
    for index, descr, units, size, used in storage:
        rows += [
            (f"1.3.6.1.2.1.25.2.3.1.3.{index}", _STR, descr),
            (f"1.3.6.1.2.1.25.2.3.1.4.{index}", _INT, str(units)),
            (f"1.3.6.1.2.1.25.2.3.1.5.{index}", _INT, str(size)),
            (f"1.3.6.1.2.1.25.2.3.1.6.{index}", _INT, str(used)),
        ]
    pf = "1.3.6.1.4.1.12325.1.200.1"
    rows += [
        (f"{pf}.1.1.0", _INT, "1"),  # pfStatusRunning: true(1)
        (f"{pf}.2.1.0", _C64, str(5_000_000 + traffic // 1000)),  # pfCounterMatch
        (f"{pf}.2.6.0", _C64, "0"),  # pfCounterMemDrop
        (f"{pf}.3.1.0", _G32, "1234"),  # pfStateTableCount
        (f"{pf}.3.3.0", _C64, str(800_000 + traffic // 10_000)),  # pfStateTableInserts
        (f"{pf}.3.4.0", _C64, str(798_766 + traffic // 10_000)),  # pfStateTableRemovals
        (f"{pf}.5.1.0", _G32, "398000"),  # pfLimitsStates
    ]
    rows.sort(key=lambda r: tuple(int(p) for p in r[0].split(".")))
    return "".join(f"{oid}|{kind}|{value}\n" for oid, kind, value in rows)
