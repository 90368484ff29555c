"""The Debian packages (issue 16): built from this checkout with scripts/build-deb's code, checked
by their contents, their maintainer scripts and lintian; then the agent's is installed, enrolled,
streams to a real collector and broker, is upgraded with a backlog in its buffer that is then
delivered, removed and purged, in a chroot the test makes: an overlay of this machine's root, so
that nothing of the machine itself changes. (The "previous build" is the same tree under an
earlier version: what an upgrade exercises is dpkg's and the maintainer scripts' part.)"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from outpost_iot.dev import debian
from outpost_iot.dev._processes import Mosquitto, free_port
from outpost_iot.dev.debian import PACKAGES
from tests._wait import wait_until
from tests.conftest import require_service
from tests.e2e._harness import Harness
from tests.provisioning.test_enrollment import _api_up, new_token, tune, url

# The first test waits for the packages to build; on a busy machine that alone can take several
# minutes (a generous deadline, not a measure: the build's time is in docs/performance.md).
pytestmark = [pytest.mark.slow, pytest.mark.broker, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]
VERSION, PREVIOUS = "0.1.0-1", "0.1.0~rc1-1"


def _can_build() -> bool:
    if shutil.which("dpkg-deb") is None or not debian.PYTHON.exists():
        return False
    probe = ["unshare", "--mount", *([] if os.geteuid() == 0 else ["--map-root-user"]), "true"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def build_for_tests(work: Path) -> dict[str, str]:
    """Both packages at VERSION and the agent's at PREVIOUS, built in ``work``."""
    stages = debian.stage_all(["agent", "collector"], work / "build")
    agent, collector = PACKAGES["agent"], PACKAGES["collector"]
    # The earlier version first: packing writes the version's changelog into the tree.
    previous = debian.pack(agent, stages["agent"], PREVIOUS, work / "previous")
    debs = {
        "agent": debian.pack(agent, stages["agent"], VERSION, work / "out"),
        "collector": debian.pack(collector, stages["collector"], VERSION, work / "out"),
        "previous": previous,
        "build": work / "build",  # where they were built: no path of it may remain
    }
    return {k: str(v) for k, v in debs.items()}


# At the lowest CPU priority: the build and lintian take only what the tests leave idle, so
# that the timing of the tests running meanwhile (a burst at a site broker) stays theirs. When
# a test waits for them they get a normal priority back (_Build.hurry): on a busy machine the
# lowest one would leave them almost no CPU at all.
NICE = ["nice", "-n", "19"]


class _Build:
    """The packages, built and then read by lintian in the background, from when
    tests/conftest.py starts it (past the agent's tests): a build is mostly pip, xz and lintian,
    and overlaps the tests that run before these instead of adding its minute and a half."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._debs: dict[str, Path] = {}
        self._lintian = ""
        self._built = threading.Event()
        self._error = ""
        self._running: subprocess.Popen[str] | None = None

    def start(self) -> None:
        if self._thread is None and _can_build():
            work = Path(tempfile.mkdtemp(prefix="outpost-deb-test-"))
            atexit.register(shutil.rmtree, work, True)
            self._thread = threading.Thread(target=self._run, args=(work,), daemon=True)
            self._thread.start()

    def _run(self, work: Path) -> None:
        code = "import json, sys, pathlib; from tests.test_debian import build_for_tests as b;"
        code += " print(json.dumps(b(pathlib.Path(sys.argv[1]))))"
        try:
            code_, out, err = self._niced([sys.executable, "-c", code, str(work)])
            if code_ != 0:
                self._error = err[-3000:]
                return
            self._debs = {k: Path(v) for k, v in json.loads(out.splitlines()[-1]).items()}
        finally:
            self._built.set()
        if shutil.which("lintian"):
            self._lintian = self._niced(
                ["lintian", "--tag-display-limit", "0", "--show-overrides", "--display-info",
                 str(self._debs["agent"]), str(self._debs["collector"])]
            )[1]  # fmt: skip

    def _niced(self, cmd: list[str]) -> tuple[int, str, str]:
        """Run ``cmd`` at the lowest priority, in a process group of its own (see hurry)."""
        proc = subprocess.Popen(
            [*NICE, *cmd], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip
        self._running = proc
        out, err = proc.communicate()
        return proc.returncode, out, err

    def hurry(self) -> None:
        """A test waits for the build or lintian: give them a normal priority (root may; as
        another user they keep theirs and the test waits longer)."""
        proc = self._running
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):  # not permitted, or it has just ended
                os.setpriority(os.PRIO_PGRP, proc.pid, 0)

    def debs(self) -> dict[str, Path]:
        self.start()
        assert self._thread is not None
        while not self._built.wait(timeout=1.0):
            self.hurry()  # every second: processes the build starts later inherit the old nice
        if self._error:
            raise AssertionError(f"the packages did not build:\n{self._error}")
        return self._debs

    def lintian(self) -> str:
        """lintian's report on both packages (each line names its package)."""
        assert self._thread is not None
        while self._thread.is_alive():
            self.hurry()  # lintian may start after the build was hurried
            self._thread.join(timeout=1.0)
        return self._lintian


BUILD = _Build()


@pytest.fixture(scope="session")
def debs() -> dict[str, Path]:
    """Both packages at VERSION, and the agent's again at PREVIOUS."""
    require_service(
        "a Debian package build",
        _can_build(),
        "needs dpkg-deb, /usr/bin/python3 with venv (apt-get install python3-venv) and mount"
        " namespaces (root, or unprivileged user namespaces)",
    )
    return BUILD.debs()


def _field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def _listing(deb: Path) -> dict[str, str]:
    """path → the `dpkg-deb -c` line (mode, owner, size, date, path[ -> target])."""
    lines = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    out = {}
    for line in lines:
        path = line.split(maxsplit=5)[5].split(" -> ")[0].removeprefix("./").rstrip("/")
        out[path] = line
    return out


@pytest.mark.parametrize("which", ["agent", "collector"])
def test_a_package_holds_the_environment_the_commands_the_unit_and_nothing_else(
    debs: dict[str, Path], which: str, tmp_path: Path
) -> None:
    package, deb = PACKAGES[which], debs[which]
    major, minor = debian.python_version()
    assert _field(deb, "Package") == package.name
    assert _field(deb, "Version") == VERSION
    depends = _field(deb, "Depends")
    assert f"python3 (>= {major}.{minor}), python3 (<< {major}.{minor + 1})" in depends
    assert "adduser" in depends
    assert _field(deb, "Recommends") == ", ".join(package.recommends)
    files = _listing(deb)
    for command in package.commands:
        assert f"usr/bin/{command}" in files
        assert files[f"usr/bin/{command}"].endswith(f" -> {package.prefix}/bin/{command}")
        assert f"{package.prefix.lstrip('/')}/bin/{command}" in files
    others = {c for p in PACKAGES.values() for c in p.commands} - set(package.commands)
    assert not [c for c in others if f"{package.prefix.lstrip('/')}/bin/{c}" in files]
    assert f"lib/systemd/system/{package.unit}" in files
    # Nothing in /etc or /var: the config and the state are made on the machine, and kept.
    assert not [p for p in files if p.startswith(("etc/", "var/"))]
    assert all(" root/root " in line for line in files.values())
    assert not [line for line in files.values() if line[0] == "-" and line[8] == "w"]
    assert not [line for line in files.values() if "s" in line[:10]]  # no setuid or setgid
    if which == "agent":  # the firmware profiles, where the agent looks for them
        for profile in sorted((ROOT / "firmware-profiles").glob("*/profile.toml")):
            share = f"opt/outpost-agent/share/outpost/firmware-profiles/{profile.parent.name}"
            assert f"{share}/profile.toml" in files, profile.parent.name
    if which == "collector":  # the console's page and its library, served from the package
        for name in ("index.html", "console.js", "console.css", "vendor/uplot-1.6.31.min.js"):
            assert [p for p in files if p.endswith(f"/outpost_iot/collector/console/{name}")], name
    # Built where it lives: every script's interpreter and every path in it is the installed
    # one, not the build's.
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    for script in (tree / package.prefix.lstrip("/") / "bin").iterdir():
        if script.is_file() and not script.is_symlink():
            assert script.read_bytes().startswith(f"#!{package.prefix}/bin/python".encode())
    unit = (tree / "lib/systemd/system" / package.unit).read_text()
    assert unit == (ROOT / "systemd" / package.unit).read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert (tree / exec_start.split("=", 1)[1].split()[0].lstrip("/")).is_file()
    stray = subprocess.run(
        ["grep", "-rlI", "-e", str(debs["build"]), "-e", str(ROOT), str(tree)],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    assert stray == ""
    copyright_ = (tree / "usr/share/doc" / package.name / "copyright").read_text()
    assert "License: Apache-2.0" in copyright_
    assert " pydantic " in copyright_  # the bundled packages are listed with their licences


def test_the_checksums_file_verifies_the_packages(debs: dict[str, Path]) -> None:
    out = debs["agent"].parent
    sums = debian.write_checksums(out)
    result = subprocess.run(
        ["sha256sum", "-c", sums.name], cwd=out, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(line.split(": ")[0] for line in result.stdout.splitlines()) == sorted(
        p.name for p in out.glob("*.deb")
    )


# -- installed ---------------------------------------------------------------------------------


class Chroot:
    """An overlay of this machine's root: packages installed in it change nothing outside."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"

    def run(
        self, *args: str, user: str = "", check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["chroot", *([f"--userspec={user}:{user}"] if user else []), str(self.root), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stdout}{result.stderr}")
        return result

    def spawn(self, *args: str, user: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(
                ["chroot", f"--userspec={user}:{user}", str(self.root), *args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def copy_in(self, file: Path) -> str:
        shutil.copy(file, self.path(f"/tmp/{file.name}"))
        return f"/tmp/{file.name}"

    def dpkg(self, *args: str) -> str:
        return self.run("dpkg", *args).stdout


@contextlib.contextmanager
def chroot_of_this_machine(base: Path) -> Iterator[Chroot]:
    require_service(
        "an overlay chroot",
        os.geteuid() == 0 and shutil.which("chroot") is not None,
        "the install test mounts an overlay of / and chroots into it: run it as root",
    )
    c = Chroot(base)
    for d in ("upper", "work", "root"):
        (base / d).mkdir(parents=True)
    mounts: list[Path] = []

    def mount(*args: str, at: Path) -> None:
        subprocess.run(["mount", *args, str(at)], check=True, capture_output=True)
        mounts.append(at)

    try:
        mount(
            "-t", "overlay", "overlay", "-o",
            f"lowerdir=/,upperdir={base / 'upper'},workdir={base / 'work'}", at=c.root,
        )  # fmt: skip
        mount("--bind", "/proc", at=c.path("/proc"))
        mount("--bind", "/dev", at=c.path("/dev"))
        mount("-t", "tmpfs", "tmpfs", at=c.path("/tmp"))
        mount("-t", "tmpfs", "tmpfs", at=c.path("/run"))  # no systemd in here
        yield c
    finally:
        for at in reversed(mounts):
            subprocess.run(["umount", "-l", str(at)], check=False, capture_output=True)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _stored(h: Harness, gateway_id: str) -> int:
    """Host readings of the gateway in the collector's store."""
    with contextlib.closing(sqlite3.connect(f"file:{h.data / 'timeseries.db'}?mode=ro", uri=True)) as db:  # fmt: skip
        try:
            return int(
                db.execute(
                    "SELECT count(*) FROM (SELECT DISTINCT p.series_id, p.ts FROM points p JOIN"
                    " series s ON s.id = p.series_id WHERE json_extract(s.tags, '$.gateway') = ?)",
                    (gateway_id,),
                ).fetchone()[0]
            )
        except sqlite3.OperationalError:
            return 0


@pytest.fixture
def pki(broker: Mosquitto, tmp_path: Path) -> Iterator[Harness]:
    """A real broker, and a collector that is also the CA, serving its HTTPS API."""
    h = Harness(broker=broker, root=tmp_path / "cloud")
    h.root.mkdir()
    h.api_port = free_port()
    h.start_collector()
    wait_until(lambda: _api_up(h), timeout=15, what="the collector's API")
    yield h
    h.close()


SYSTEMCTL_STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> /tmp/systemd-calls
"""


def _as_if_systemd_ran(c: Chroot) -> None:
    """systemctl and deb-systemd-invoke that only say what they were asked, and the marker
    maintainer scripts look for: what the scripts would do to the service, recorded."""
    c.path("/run/systemd/system").mkdir(parents=True)
    for name in ("systemctl", "deb-systemd-invoke"):
        stub = c.path(f"/usr/local/sbin/{name}")
        stub.write_text(SYSTEMCTL_STUB)
        stub.chmod(0o755)


def _calls(c: Chroot) -> list[str]:
    calls = c.path("/tmp/systemd-calls")
    lines = calls.read_text().splitlines() if calls.exists() else []
    calls.unlink(missing_ok=True)
    return lines


def test_the_agent_installs_enrolls_streams_upgrades_with_its_backlog_and_is_removed(
    debs: dict[str, Path], pki: Harness, tmp_path: Path
) -> None:
    h = pki
    with chroot_of_this_machine(tmp_path / "chroot") as c:
        _as_if_systemd_ran(c)
        # Installed: a user, a private state directory, nothing started or enabled.
        c.dpkg("-i", c.copy_in(debs["previous"]))
        uid = int(c.run("id", "-u", "outpost").stdout)
        state = c.path("/var/lib/outpost")
        assert (state.stat().st_mode & 0o777, state.stat().st_uid) == (0o700, uid)
        assert _calls(c) == ["systemctl --system daemon-reload"]
        assert not c.path(
            "/etc/systemd/system/multi-user.target.wants/outpost-agent.service"
        ).exists()

        # Enrolled as the technician does (without --start: there is no systemd in here).
        token = new_token(h)
        ca = c.copy_in(h.broker.files.ca_cert)
        enrolled = c.run(
            "outpost-provision", "enroll", "--collector", url(h), "--token", token,
            "--ca-file", ca,
        )  # fmt: skip
        assert "Enrolled as gateway" in enrolled.stdout
        config = c.path("/etc/outpost/agent.toml")
        info = json.loads(c.path("/var/lib/outpost/identity/enrollment.json").read_text())
        gw = info["gateway_id"]
        tune(config)
        config.write_text(config.read_text().replace("interval = 10", "interval = 0.5"))

        def agent() -> subprocess.Popen[bytes]:
            return c.spawn(
                "/usr/bin/outpost-agent", "run", "--config", "/etc/outpost/agent.toml",
                user="outpost", log=tmp_path / "agent.log",
            )  # fmt: skip

        def status() -> dict[str, object]:
            out = c.run("outpost-agent", "status", "--config", "/etc/outpost/agent.toml", "--json")
            return json.loads(out.stdout)  # type: ignore[no-any-return]

        def log() -> str:
            return (tmp_path / "agent.log").read_text(errors="replace")[-3000:]

        proc = agent()
        try:
            wait_until(lambda: _stored(h, gw) > 0, timeout=60, what="readings of the installed agent", seen=log)  # fmt: skip
            # The broker goes away: readings wait in the buffer.
            h.broker.stop()
            wait_until(lambda: status()["backlog_readings"] >= 10, timeout=60, what="a backlog", seen=status)  # fmt: skip
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        backlog = status()["backlog_readings"]
        stored_before = _stored(h, gw)
        kept = {p: _digest(c.path(p)) for p in ("/etc/outpost/agent.toml", "/var/lib/outpost/identity/gateway.key", "/var/lib/outpost/identity/gateway.pem")}  # fmt: skip

        # Upgraded: the config, the identity and the backlog stay as they were; a running
        # agent is restarted into the new version.
        c.dpkg("-i", c.copy_in(debs["agent"]))
        assert _calls(c) == [
            "systemctl --system daemon-reload",  # the old package's postrm
            "systemctl --system daemon-reload",
            "deb-systemd-invoke try-restart outpost-agent.service",
        ]
        assert c.run("dpkg-query", "-W", "-f", "${Version}", "outpost-agent").stdout == VERSION
        assert {p: _digest(c.path(p)) for p in kept} == kept
        assert status()["backlog_readings"] == backlog
        # ... and the backlog is delivered once the broker is back.
        h.broker.start()
        proc = agent()
        try:
            wait_until(
                lambda: _stored(h, gw) >= stored_before + backlog and status()["backlog_readings"] == 0,
                timeout=90, what="the backlog delivered after the upgrade",
                seen=lambda: (_stored(h, gw), status(), log()),
            )  # fmt: skip
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

        # Removed: the service stopped, the code gone; the config, the identity and the buffer
        # stay.
        c.dpkg("-r", "outpost-agent")
        assert _calls(c) == [
            "deb-systemd-invoke stop outpost-agent.service",
            "systemctl --system daemon-reload",
        ]
        assert not c.path("/opt/outpost-agent").exists()
        assert not c.path("/usr/bin/outpost-agent").exists()
        assert c.path("/etc/outpost/agent.toml").exists()
        assert c.path("/var/lib/outpost/buffer.db").exists()
        assert c.path("/var/lib/outpost/identity/gateway.key").exists()
        # Purged: they go too.
        c.dpkg("-P", "outpost-agent")
        assert not c.path("/etc/outpost/agent.toml").exists()
        assert not c.path("/var/lib/outpost").exists()
        assert c.run("dpkg-query", "-W", "outpost-agent", check=False).returncode != 0


def test_the_collector_installs_runs_its_commands_and_purges_clean(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    with chroot_of_this_machine(tmp_path / "chroot") as c:
        c.dpkg("-i", c.copy_in(debs["collector"]))
        assert c.path("/var/lib/outpost-collector").stat().st_mode & 0o777 == 0o700
        assert "outpost-collector, version" in c.run("outpost-collector", "--version").stdout
        # Its imports hold (fastapi, the stores' clients): the broker set-up runs.
        c.run("outpost-collector", "broker", "init", "--dir", "/tmp/broker", "--port", "8883")
        assert c.path("/tmp/broker/mosquitto.conf").exists()
        c.dpkg("-P", "outpost-collector")
        assert not c.path("/var/lib/outpost-collector").exists()
        assert not c.path("/opt/outpost-collector").exists()


# Last: lintian reads the packages in the background while the tests above run.
@pytest.mark.parametrize("which", ["agent", "collector"])
def test_the_maintainer_scripts_parse_and_lintian_finds_nothing_unexplained(
    debs: dict[str, Path], which: str, tmp_path: Path
) -> None:
    control = tmp_path / "control"
    subprocess.run(["dpkg-deb", "-e", str(debs[which]), str(control)], check=True)
    for name in ("postinst", "prerm", "postrm"):
        script = control / name
        assert script.stat().st_mode & 0o111, name
        subprocess.run(["sh", "-n", str(script)], check=True)
    require_service("lintian", shutil.which("lintian") is not None, "apt-get install lintian")
    mine = f" {PACKAGES[which].name}"
    hints = [
        line
        for line in BUILD.lintian().splitlines()
        if line[:2] in ("E:", "W:", "I:", "O:") and line[2:].split(":")[0] == mine
    ]
    # It read the package: the tags this project overrides (each explained in the package's
    # overrides file) are reported as overridden, and nothing else is reported.
    assert [h for h in hints if h.startswith("O:")], "lintian did not report on the package"
    hints = [h for h in hints if not h.startswith("O:")]
    assert hints == [], "\n".join(hints)
