"""Debian packages of the agent and the collector, built from this checkout (scripts/build-deb).

Each package carries the code and its Python dependencies in a virtual environment of the
machine's own ``/usr/bin/python3`` under ``/opt`` (``/opt/outpost-agent``,
``/opt/outpost-collector``), with its commands on the PATH (``/usr/bin``), its hardened systemd
unit, and maintainer scripts that make the system user and the state directory. The environment
is built where it will live (``/opt/...`` inside a private mount namespace), so every path in it
(the scripts' ``#!`` lines, compiled bytecode) is the installed one. The Python dependencies come
from the package index (or the wheels pip is pointed at); nothing else is fetched.

A package is built for the Debian (or Ubuntu) release and architecture of the machine that builds
it: it depends on that release's Python minor version, whose ABI the compiled wheels need.

Installing does not start anything (an agent needs enrolling first: ``outpost-provision enroll
--start`` enables and starts it). Upgrading keeps the config, the identity and the buffer, and
restarts a running service; removing keeps them; purging removes them. docs/technician.md and
docs/collector.md say how to install; tests/test_debian.py builds, installs, upgrades and removes
them in a chroot.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import email.parser
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path("/usr/bin/python3")  # the distribution's Python: the one the target machine has
MAINTAINER = "Outpost developers <outpost@outpost-iot.dev>"
HOMEPAGE = "https://github.com/outpost-iot/outpost"


@dataclass(frozen=True, kw_only=True)
class Package:
    name: str  # the Debian package, and /opt/<name>
    extra: str  # the Python extra it installs
    commands: tuple[str, ...]  # put on the PATH
    user: str  # the system user the service runs as
    state: str  # its state directory (the unit's StateDirectory=)
    unit: str
    config: str  # the config file in /etc/outpost that purging removes
    synopsis: str
    description: str
    recommends: tuple[str, ...] = ()
    lintian: str = ""  # overrides only this package needs, with why

    @property
    def prefix(self) -> str:
        return f"/opt/{self.name}"


PACKAGES = {
    "agent": Package(
        name="outpost-agent",
        extra="agent",
        commands=("outpost-agent", "outpost-provision"),
        user="outpost",
        state="/var/lib/outpost",
        unit="outpost-agent.service",
        config="agent.toml",
        synopsis="Outpost gateway agent: site data to the cloud without losing it",
        description=(
            "Collects readings from the devices of a site (UniFi, pfSense, Frigate, MQTT\n"
            "sensors, the host itself), buffers every reading durably in SQLite and ships\n"
            "it over MQTT with mutual TLS to an Outpost collector. Enroll the gateway with\n"
            "outpost-provision enroll --start; installing starts nothing."
        ),
    ),
    "collector": Package(
        name="outpost-collector",
        extra="collector",
        commands=("outpost-collector",),
        user="outpost-collector",
        state="/var/lib/outpost-collector",
        unit="outpost-collector.service",
        config="collector.toml",
        synopsis="Outpost collector: ingests, stores and serves gateway telemetry",
        description=(
            "Consumes the MQTT stream of Outpost gateways, validates, rate-limits and\n"
            "deduplicates it, writes it to its stores (SQLite, or PostgreSQL,\n"
            "VictoriaMetrics and Redis) and acknowledges it; enrolls gateways and serves\n"
            "the operators' API. Configure it in /etc/outpost/collector.toml;\n"
            "installing starts nothing."
        ),
        recommends=("mosquitto",),
        lintian=(
            "# - prometheus_client's modules start with '#!python' though they are not run.\n"
            "outpost-collector: script-not-executable [opt/*]\n"
            "outpost-collector: unusual-interpreter python [opt/*]\n"
            "# - the libraries psycopg's wheel vendors stay as published (not stripped: see\n"
            "#   build_environment), and their strings are theirs.\n"
            "outpost-collector: binary-has-unneeded-section .comment [opt/*.libs/*]\n"
            "outpost-collector: spelling-error-in-binary * [opt/*]\n"
        ),
    ),
}


class BuildError(Exception):
    """A package cannot be built; the message says what is missing."""


def project_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def architecture() -> str:
    return _run(["dpkg", "--print-architecture"]).strip()


def python_version() -> tuple[int, int]:
    out = _run([str(PYTHON), "-c", "import sys; print(*sys.version_info[:2])"])
    major, minor = out.split()
    return int(major), int(minor)


def _run(cmd: list[str], **kw: object) -> str:
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        raise BuildError(f"{cmd[0]} is not installed") from exc
    if result.returncode != 0:
        raise BuildError(f"{' '.join(cmd[:3])} … failed:\n{result.stdout}{result.stderr}")
    return str(result.stdout)


def build_wheel(out: Path) -> Path:
    """The project's own wheel, from this checkout."""
    out.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)])
    [wheel] = out.glob("outpost_iot-*.whl")
    return wheel


def build_environment(package: Package, wheel: Path, stage: Path) -> None:
    """The virtual environment at ``stage/opt/<name>``, built as ``/opt/<name>``."""
    target = stage / package.prefix.lstrip("/")
    target.mkdir(parents=True)
    if not PYTHON.exists():
        raise BuildError(f"{PYTHON} is missing: install python3 (the package uses the system's)")
    script = "\n".join(
        [
            "set -eu",
            # Only this process sees /opt replaced: the environment is built at its real path.
            "mount -t tmpfs tmpfs /opt",
            f"mkdir -p {package.prefix}",
            f"mount --bind {target} {package.prefix}",
            f"{PYTHON} -m venv {package.prefix}",
            f"{package.prefix}/bin/python -m pip install -q --no-warn-script-location"
            f" '{wheel}[{package.extra}]'",
            f"{package.prefix}/bin/python -m pip uninstall -q -y pip setuptools",
            f"rm -f {package.prefix}/bin/activate* {package.prefix}/bin/Activate.ps1",
        ]
    )
    unshare = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        unshare.append("--map-root-user")  # a user namespace, where mounting is allowed
    _run([*unshare, "sh", "-c", script])
    for leftover in target.rglob("__pycache__"):  # of pip itself, now gone
        if not any(leftover.parent.glob("*.py")):
            shutil.rmtree(leftover)
    for junk in target.rglob(".DS_Store"):  # a macOS folder file some packages publish
        junk.unlink()
    shutil.rmtree(target / "include", ignore_errors=True)  # venv's, for C headers: empty
    # Where the wheel was installed from (PEP 610): a path of the build machine.
    for url in target.glob("lib/python*/site-packages/outpost_iot-*.dist-info/direct_url.json"):
        url.unlink()
        record = url.with_name("RECORD")
        record.write_text(
            "".join(
                line + "\n"
                for line in record.read_text().splitlines()
                if not line.startswith(f"{url.parent.name}/direct_url.json,")
            )
        )
    # The commands of the other package (the wheel holds every entry point) cannot run here:
    # their dependencies are not in this environment.
    ours = {"outpost-agent", "outpost-provision", "outpost-collector", "outpost-dev"}
    for command in ours - set(package.commands):
        (target / "bin" / command).unlink(missing_ok=True)
    # Compiled extensions without their debugging symbols: a third of the size, same code.
    # (The libraries a wheel vendors, in <name>.libs/, were rewritten by auditwheel's patchelf,
    # which strip can break: they stay as published.)
    strip = shutil.which("strip")
    for shared in [*target.rglob("*.so"), *target.rglob("*.so.*")]:
        if strip is not None and shared.suffix == ".so":
            _run([strip, "--strip-unneeded", "--remove-section=.comment", str(shared)])
        shared.chmod(0o644)  # loaded, not run


def _glibc_needed(prefix: Path) -> str:
    """The oldest glibc the compiled wheels in the environment run on (their manylinux tag)."""
    needed = (2, 17)
    for wheel_file in prefix.glob("lib/python*/site-packages/*.dist-info/WHEEL"):
        for tag in re.findall(r"manylinux_(\d+)_(\d+)", wheel_file.read_text()):
            needed = max(needed, (int(tag[0]), int(tag[1])))
        if "manylinux2014" in wheel_file.read_text():
            needed = max(needed, (2, 17))
    return f"{needed[0]}.{needed[1]}"


def _bundled(prefix: Path) -> list[tuple[str, str, str]]:
    """(name, version, licence) of every Python distribution in the environment."""
    out = []
    parser = email.parser.Parser()
    for meta in sorted(prefix.glob("lib/python*/site-packages/*.dist-info/METADATA")):
        m = parser.parsestr(meta.read_text(errors="replace"), headersonly=True)
        licence = (m.get("License-Expression") or "").strip()
        if not licence:
            classifiers = [c for c in m.get_all("Classifier") or [] if c.startswith("License ::")]
            licence = classifiers[0].rsplit(" :: ", 1)[1] if classifiers else ""
        if not licence:
            licence = (m.get("License") or "see its METADATA").splitlines()[0][:80]
        out.append((str(m["Name"]), str(m["Version"]), licence))
    return out


def _copyright(package: Package, prefix: Path) -> str:
    lines = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
        f"Upstream-Name: {package.name}",
        f"Source: {HOMEPAGE}",
        "",
        "Files: *",
        "Copyright: Outpost developers",
        "License: Apache-2.0",
        " On Debian systems the full text of the Apache License 2.0 is in",
        " /usr/share/common-licenses/Apache-2.0.",
        "",
        f"Files: {package.prefix.lstrip('/')}/lib/*",
        "Copyright: the authors of each Python package",
        "License: various",
        " The environment bundles these Python packages (name, version, licence as its",
        " metadata states it); each one's licence is in its .dist-info directory:",
    ]
    lines += [f" {name} {version}: {licence}" for name, version, licence in _bundled(prefix)]
    return "\n".join(lines) + "\n"


def _changelog(package: Package, version: str) -> bytes:
    try:
        rev = _run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]).strip()
    except BuildError:
        rev = "a checkout without git"
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(_build_time()))
    text = (
        f"{package.name} ({version}) unstable; urgency=medium\n\n"
        f"  * Built from the Outpost checkout {rev} with scripts/build-deb.\n\n"
        f" -- {MAINTAINER}  {date}\n"
    )
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def _build_time() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else now."""
    return int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))


def _script(body: str) -> str:
    return "#!/bin/sh\nset -e\n\n" + body.strip() + "\n"


def maintainer_scripts(package: Package) -> dict[str, str]:
    """postinst, prerm and postrm: the user and the state directory, what upgrading,
    removing and purging do to the service and the data."""
    p, unit, state = package, package.unit, package.state
    wants = f"/etc/systemd/system/multi-user.target.wants/{unit}"
    postinst = f"""
case "$1" in
configure)
    # The service's own user; its home is the state directory (the buffer, the identity or
    # the stores), which only it may read. An existing one is kept as it is.
    if ! getent passwd {p.user} >/dev/null; then
        adduser --system --group --home {state} \\
            --gecos "{p.synopsis.split(":")[0]}" {p.user} >/dev/null
    fi
    if [ ! -d {state} ]; then
        install -d -o {p.user} -g {p.user} {state}
    fi
    if [ -z "$2" ]; then  # a first installation
        chmod 0700 {state}
    fi
    # The config is written by enrollment or by the operator, and holds no secret the
    # service's user may not read; the directory is root's.
    install -d -m 0755 /etc/outpost
    ;;
esac
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
    # An upgrade: a running service goes on with the new version. Installing starts nothing.
    if [ "$1" = configure ] && [ -n "$2" ]; then
        deb-systemd-invoke try-restart {unit} >/dev/null || true
    fi
fi
exit 0
"""
    prerm = f"""
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop {unit} >/dev/null || true
fi
exit 0
"""
    postrm = f"""
case "$1" in
purge)
    # Purging removes what the service made: its config, its state (the buffer, the
    # identity, the stores) and its enablement. Removing keeps them for a reinstall.
    rm -f {wants}
    rm -f /etc/outpost/{p.config} /etc/outpost/{p.config}.*
    rm -rf {state}
    rmdir --ignore-fail-on-non-empty /etc/outpost 2>/dev/null || true
    ;;
esac
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
exit 0
"""
    return {"postinst": _script(postinst), "prerm": _script(prerm), "postrm": _script(postrm)}


# Lintian tags that an environment under /opt raises by nature, with why each is so. lintian
# reports an override no tag needs, so each package's list holds only what it raises.
LINTIAN_OVERRIDES = """\
# The code and its Python dependencies live in one virtual environment under /opt, so that an
# upgrade replaces them together and nothing of the system's Python is touched (as packages made
# with dh-virtualenv do). These tags follow from that:
# - the environment is under /opt, as add-on software is;
{name}: dir-or-file-in-opt [opt/*]
# - bytecode is compiled at build time for the installed paths (small boards start faster);
{name}: package-installs-python-pycache-dir [opt/*]
# - the commands' interpreter is the environment's Python, a link to /usr/bin/python3;
{name}: unusual-interpreter /opt/{name}/bin/python [opt/{name}/bin/*]
# - files as the Python packages publish them (a test script without its exec bit unset);
{name}: executable-not-elf-or-script [opt/*]
# - the Python packages carry their READMEs and licence texts in their metadata, where pip and
#   the licence listing in usr/share/doc/{name}/copyright find them;
{name}: package-contains-documentation-outside-usr-share-doc [opt/*]
{name}: extra-license-file [opt/*]
# - their compiled parts are the wheels their projects publish, built with those projects'
#   flags, not rebuilt here with Debian's hardening flags.
{name}: hardening-no-bindnow [opt/*]
{name}: hardening-no-fortify-functions [opt/*]
# Gateways and servers run systemd; no System V init script is shipped.
{name}: package-supports-alternative-init-but-no-init.d-script [lib/systemd/system/{name}.service]
# The commands document themselves (--help) and docs/ documents them; no manual pages yet.
{name}: no-manual-page [usr/bin/*]
# Built outside the Debian archive: its changelog closes no Debian bug.
{name}: initial-upload-closes-no-bugs [usr/share/doc/{name}/changelog.Debian.gz:1]
{extra}"""


def stage_package(package: Package, wheel: Path, work: Path) -> Path:
    """The package's file tree (everything but DEBIAN/control), in ``work``."""
    stage = work / package.name
    if stage.exists():
        shutil.rmtree(stage)
    build_environment(package, wheel, stage)
    prefix = stage / package.prefix.lstrip("/")
    bin_dir = stage / "usr/bin"
    bin_dir.mkdir(parents=True)
    for command in package.commands:
        if not (prefix / "bin" / command).exists():
            raise BuildError(f"{command} is not in the environment: is it in [project.scripts]?")
        (bin_dir / command).symlink_to(f"{package.prefix}/bin/{command}")
    units = stage / "lib/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(ROOT / "systemd" / package.unit, units / package.unit)
    (units / package.unit).chmod(0o644)
    doc = stage / "usr/share/doc" / package.name
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(_copyright(package, prefix))
    overrides = stage / "usr/share/lintian/overrides"
    overrides.mkdir(parents=True)
    (overrides / package.name).write_text(
        LINTIAN_OVERRIDES.format(name=package.name, extra=package.lintian)
    )
    debian = stage / "DEBIAN"
    debian.mkdir()
    for name, text in maintainer_scripts(package).items():
        (debian / name).write_text(text)
        (debian / name).chmod(0o755)
    for path in stage.rglob("*"):  # no group- or world-writable files; readable by all
        if not path.is_symlink():
            mode = path.stat().st_mode & 0o7777
            path.chmod((mode & ~0o022) | 0o444 | (0o111 if path.is_dir() else 0))
    return stage


def pack(package: Package, stage: Path, version: str, out: Path) -> Path:
    """Write ``DEBIAN/control`` for ``version`` and build the .deb into ``out``."""
    doc = stage / "usr/share/doc" / package.name
    (doc / "changelog.Debian.gz").write_bytes(_changelog(package, version))
    major, minor = python_version()
    prefix = stage / package.prefix.lstrip("/")
    depends = [
        f"python3 (>= {major}.{minor})",
        f"python3 (<< {major}.{minor + 1})",
        f"libc6 (>= {_glibc_needed(prefix)})",
        "adduser",
    ]
    size_kb = sum(p.lstat().st_size for p in stage.rglob("*") if not p.is_dir()) // 1024
    fields = {
        "Package": package.name,
        "Version": version,
        "Architecture": architecture(),
        "Maintainer": MAINTAINER,
        "Installed-Size": str(size_kb),
        "Depends": ", ".join(depends),
        **({"Recommends": ", ".join(package.recommends)} if package.recommends else {}),
        "Section": "net",
        "Priority": "optional",
        "Homepage": HOMEPAGE,
        "Description": f"{package.synopsis}\n"
        + "\n".join(f" {line}" for line in package.description.splitlines()),
    }
    control = "".join(f"{k}: {v}\n" for k, v in fields.items())
    (stage / "DEBIAN/control").write_text(control)
    sums = []
    for path in sorted(stage.rglob("*")):
        if path.is_file() and not path.is_symlink() and "DEBIAN" not in path.parts:
            digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
            sums.append(f"{digest}  {path.relative_to(stage).as_posix()}\n")
    (stage / "DEBIAN/md5sums").write_text("".join(sums))
    (stage / "DEBIAN/md5sums").chmod(0o644)
    (stage / "DEBIAN/control").chmod(0o644)
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{package.name}_{version}_{architecture()}.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(stage), str(deb)])
    return deb


def write_checksums(out: Path) -> Path:
    """``SHA256SUMS`` of every package in ``out``, as ``sha256sum -c`` reads it."""
    lines = [
        f"{hashlib.sha256(deb.read_bytes()).hexdigest()}  {deb.name}\n"
        for deb in sorted(out.glob("*.deb"))
    ]
    sums = out / "SHA256SUMS"
    sums.write_text("".join(lines))
    return sums


def stage_all(which: list[str], work: Path) -> dict[str, Path]:
    """Every package's tree, built side by side (most of the time is pip's, waiting)."""
    wheel = build_wheel(work / "wheel")
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(which) or 1) as pool:
        futures = {name: pool.submit(stage_package, PACKAGES[name], wheel, work) for name in which}
        return {name: future.result() for name, future in futures.items()}


def build(which: list[str], out: Path, *, version: str | None = None) -> list[Path]:
    version = version or f"{project_version()}-1"
    with tempfile.TemporaryDirectory(prefix="outpost-deb-") as tmp:
        stages = stage_all(which, Path(tmp))
        built = [pack(PACKAGES[name], stage, version, out) for name, stage in stages.items()]
    write_checksums(out)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/build-deb", description="Build the Debian packages of Outpost."
    )
    parser.add_argument("packages", nargs="*", help="agent, collector (default: both)")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where (default: dist/)")
    parser.add_argument("--version", help="the Debian version (default: the project's, -1)")
    args = parser.parse_args(argv)
    unknown = [p for p in args.packages if p not in PACKAGES]
    if unknown:
        parser.error(f"no package {', '.join(unknown)}: choose from {', '.join(PACKAGES)}")
    try:
        for deb in build(args.packages or list(PACKAGES), args.out, version=args.version):
            print(f"{deb}  ({deb.stat().st_size // 1024} KiB)")
    except BuildError as exc:
        print(f"build-deb: {exc}", file=sys.stderr)
        return 1
    print(f"{args.out / 'SHA256SUMS'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
