"""The command sequences of the docs, run exactly as written.

A shell block in README.md or docs/ is preceded by ``<!-- doc-test: NAME -->`` (run here) or
``<!-- not run: REASON -->`` (a reference list with placeholders, or what needs hardware or a
package index; the reason says which), and a test below checks that every block is one or the
other. A block is run line by line with bash as written; a line that starts a server in the
foreground (``mosquitto -c``, ``./scripts/demo``) is started in the background instead, and the
test then checks what a user would: that it runs, as whom, and answers.

The set-up blocks that write to /etc run as root inside a private mount and network namespace
(``unshare``, with its own processes): /etc/outpost and the home directories are fresh tmpfs,
and port 8883 is the namespace's own, so the machine running the tests is not touched.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from outpost_iot.dev._processes import find_mosquitto
from tests.conftest import require_service

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?P<mark><!--[^\n]*-->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)```", re.S)
COMMAND = re.compile(r"^(\./|\.venv/|sudo |outpost-|mosquitto |export |[A-Z_]+=\S* outpost-)")
FOREGROUND = ("mosquitto -c ", "./scripts/demo")
VENV_BIN = Path(sys.executable).parent


def shell_blocks() -> list[tuple[str, str, str]]:
    """(where, marker, body) of every block whose first line is a command."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in BLOCK.finditer(text):
            body = m.group("body")
            first = body.strip().splitlines()[0] if body.strip() else ""
            if m.group("lang") in ("sh", "") and COMMAND.match(first):
                line = text[: m.start("body")].count("\n")
                where = f"{doc.relative_to(ROOT)}:{line}"
                out.append((where, (m.group("mark") or "").strip(), body))
    return out


def doc_block(name: str) -> str:
    found = [b for _, mark, b in shell_blocks() if mark == f"<!-- doc-test: {name} -->"]
    assert len(found) == 1, f"no block marked doc-test: {name} in the docs"
    return found[0]


# The README's first lines are the two commands, with nothing before them: ./scripts/test is
# what CI runs (.ci/run), ./scripts/demo is run by the quick-start test with the block after it.
QUICK_START = "./scripts/demo   # run the whole product locally"


def test_every_command_block_in_the_docs_is_run_or_says_why_not() -> None:
    unmarked = [
        where
        for where, mark, body in shell_blocks()
        if not re.fullmatch(r"<!-- (doc-test: [\w-]+|not run: .{10,}) -->", mark)
        and not body.startswith(QUICK_START)
    ]
    assert not unmarked, f"command blocks with neither doc-test nor not run: {unmarked}"
    names = [m for _, m, _ in shell_blocks() if m.startswith("<!-- doc-test")]
    tested = set(re.findall(r'doc_block\("([\w-]+)"\)', Path(__file__).read_text()))
    assert {n.split(": ")[1].removesuffix(" -->") for n in names} <= tested


def as_script(body: str) -> str:
    """The block's lines for bash, with a foreground server sent to the background."""
    lines = body.replace("\\\n", " ").splitlines()
    out = ["set -eu"]
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(FOREGROUND):
            out.append(f'{stripped} > "$HOME/doc-test-server.log" 2>&1 &')
        elif stripped:
            out.append(stripped)
    return "\n".join(out) + "\n"


def in_namespace(script: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as root in a private mount and network namespace with fresh tmpfs on
    /etc/outpost, /home and /root (the Python the tests run with stays reachable)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the set-up runs in a private mount and network namespace")
    for tool in ("unshare", "ip", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (util-linux, iproute2)")
    etc = Path("/etc/outpost")
    made = not etc.exists()
    etc.mkdir(exist_ok=True)
    pyenv = Path(sys.base_prefix)
    prelude = textwrap.dedent(
        f"""\
        set -eu
        ip link set lo up
        mount -t tmpfs -o mode=0755 tmpfs /etc/outpost
        mkdir -p /tmp/doc-test-python
        mount --bind {shlex.quote(str(pyenv))} /tmp/doc-test-python
        mount -t tmpfs -o mode=0755 tmpfs /root
        mount -t tmpfs -o mode=0755 tmpfs /home
        mkdir -p {shlex.quote(str(pyenv))}
        mount --bind /tmp/doc-test-python {shlex.quote(str(pyenv))}
        export PATH={shlex.quote(str(VENV_BIN))}:$PATH
        """
    )
    try:
        return subprocess.run(
            [
                "unshare",
                "--mount",
                "--net",
                "--pid",
                "--fork",
                "--mount-proc",
                "--propagation",
                "private",
                "bash",
                "-c",
                prelude + script,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    finally:
        if made:
            etc.rmdir()


# Connects with the collector's certificate and prints the CONNACK's reason code.
CONNECT_CHECK = """\
import ssl, socket, sys, time
d, name = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=d + "/ca.pem")
ctx.load_cert_chain(d + "/collector.pem", d + "/collector.key")
error = None
for _ in range(100):
    try:
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 8883), 2), server_hostname=name)
        break
    except OSError as exc:
        error = exc
        time.sleep(0.1)
else:
    sys.exit(f"cannot connect: {error}")
s.sendall(b"\\x10\\x11\\x00\\x04MQTT\\x05\\x02\\x00\\x1e\\x00\\x00\\x04doct")
print("CONNACK", s.recv(4).hex())
"""


def connack_reason(out: str) -> int | None:
    """The reason code of the CONNACK the check printed (0: connected), None if there was none."""
    m = re.search(r"CONNACK ([0-9a-f]{8})", out)
    if m is None or not m.group(1).startswith("20"):
        return None
    return int(m.group(1)[6:8], 16)


def broker_checks(directory: str, server_name: str) -> str:
    """Connect as the collector (the server certificate is for ``server_name``), say whom
    Mosquitto runs as and whether its user can read the CA key, stop it."""
    return textwrap.dedent(
        f"""\
        python - {directory} {server_name} <<'PY'
        {textwrap.indent(CONNECT_CHECK, "        ").strip()}
        PY
        echo "RUNS-AS $(ps -o user= -C mosquitto | sort -u | tr '\\n' ' ')"
        if runuser -u mosquitto -- cat {directory}/ca.key >/dev/null 2>&1; then echo CA-KEY-READABLE; fi
        tail -3 {directory}/mosquitto/mosquitto.log
        kill %1
        """
    )


@pytest.mark.broker
def test_the_broker_set_up_as_root_works_as_written() -> None:
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    # The server certificate is for the name the docs give; the root namespace has no such host,
    # so the check connects to 127.0.0.1 and verifies that name.
    script = as_script(doc_block("broker-as-root")) + broker_checks(
        "/etc/outpost/broker", "mqtt.example.net"
    )
    result = in_namespace(script)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert connack_reason(out) == 0, out
    assert "RUNS-AS mosquitto" in out, out  # it dropped to its user, and still read its files
    assert "CA-KEY-READABLE" not in out, "Mosquitto's user can read the device CA's key"


@pytest.mark.broker
def test_the_broker_set_up_as_an_ordinary_user_works_as_written() -> None:
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    body = as_script(doc_block("broker-as-user"))
    checks = broker_checks("$HOME/outpost/broker", "localhost").replace(
        "if runuser -u mosquitto -- cat $HOME/outpost/broker/ca.key >/dev/null 2>&1; then echo CA-KEY-READABLE; fi\n",
        "",
    )
    user_script = body + checks
    script = textwrap.dedent(
        f"""\
        mkdir -p /home/doc-user && chown nobody /home/doc-user
        cat > /tmp/doc-test-user.sh <<'USER'
        {textwrap.indent(user_script, "        ").strip()}
        USER
        runuser -u nobody -- env HOME=/home/doc-user PATH="$PATH" bash /tmp/doc-test-user.sh
        """
    )
    result = in_namespace(script)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert connack_reason(out) == 0, out
    assert "RUNS-AS nobody" in out, out


@pytest.mark.slow
@pytest.mark.broker
def test_the_quick_start_works_as_written(tmp_path: Path) -> None:
    """./scripts/demo, then the README's commands from the checkout, then Ctrl-C."""
    require_service("mosquitto", find_mosquitto() is not None, "apt-get install mosquitto")
    readme = (ROOT / "README.md").read_text()
    demo_line = next(line for line in readme.splitlines() if line.startswith(QUICK_START))
    command = demo_line.split("#")[0].strip()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            ["bash", "-c", command], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        ready = re.compile(r"\d+ readings stored")
        while not (
            "Outpost demo is running" in log.read_text()
            and ready.search(log.read_text().split("Outpost demo is running")[-1])
        ):
            assert demo.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        outputs = {}
        for line in doc_block("quick-start").strip().splitlines():
            deadline = time.monotonic() + 60
            while True:  # the UniFi console and the sensors report within their intervals
                r = subprocess.run(
                    ["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, check=False
                )
                if (r.returncode == 0 and r.stdout.strip()) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert r.returncode == 0, f"{line}: {r.stderr}"
            outputs[line] = r.stdout
        lines = list(outputs.values())
        unifi = [json.loads(x) for x in lines[0].splitlines()]
        assert unifi, "no UniFi readings"
        assert {u["measurement"] for u in unifi} == {"unifi_device"}
        assert all(json.loads(x)["measurement"] == "environment" for x in lines[1].splitlines())
        assert "backlog" in lines[2]
        assert "demo" in lines[3]  # the demo's tenant, with its enrolled gateway
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        demo.wait(60)
        assert "stopped;" in log.read_text()
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
