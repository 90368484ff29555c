# Shared set-up for scripts/demo and scripts/test on Debian/Ubuntu. Sourced, not run.
set -euo pipefail

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_debian_packages() {
    local missing=()
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
    # The Debian packages are built on the distribution's own Python (scripts/build-deb).
    [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 \
        || missing+=(python3-venv)
    if [ "${1:-}" = "--packaging" ]; then
        install_missing "${missing[@]}"
        return
    fi
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    # net-snmp's agent: a real SNMP peer for the tests (SNMP devices, v3 authPriv)
    command -v snmpd >/dev/null 2>&1 || [ -x /usr/sbin/snmpd ] || missing+=(snmpd)
    if [ "${1:-}" = "--backends" ]; then
        # The tests check the Debian packages they build with Debian's own checker.
        command -v lintian >/dev/null 2>&1 || missing+=(lintian)
        # The production backends the collector's tests run against (the demo needs none).
        compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null \
            || command -v initdb >/dev/null 2>&1 || missing+=(postgresql)
        command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
        command -v victoria-metrics >/dev/null 2>&1 || missing+=(victoria-metrics)
        # A real browser for the console's tests (Playwright drives it; it downloads none).
        command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    fi
    install_missing "${missing[@]}"
}

install_missing() {
    [ $# -gt 0 ] || return 0
    local unique
    unique=$(printf '%s\n' "$@" | sort -u | tr '\n' ' ')
    echo "installing Debian packages: $unique"
    as_root apt-get update -q
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q $unique
}

ensure_python() {
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "Outpost needs Python >= 3.11; this machine has $(python3 --version)." >&2
        exit 1
    fi
}

ensure_venv() {
    # Reinstall only when pyproject.toml changed since the last install.
    local stamp=.venv/.outpost-installed
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    [ -x .venv/bin/python ] || python3 -m venv .venv
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        # Before 0.1 the distribution was called `outpost`, a name that is another project's
        # on the package index: an environment made then still lists it.
        .venv/bin/python -m pip uninstall -q -y outpost 2>/dev/null || true
        .venv/bin/python -m pip install -q -e ".[dev]"
        echo "$want" > "$stamp"
    fi
}
