from __future__ import annotations

from pathlib import Path

import pytest

from outpost_iot.agent import ConfigError, load_config


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name in ("ca.pem", "gw.pem", "gw.key"):
        (tmp_path / name).write_text("x")
    return tmp_path


def write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(body)
    return p


def base(d: Path, extra: str = "", gateway: str = "gw-1") -> str:
    return f"""
gateway_id = "{gateway}"
[uplink]
host = "broker"
ca_file = "{d / "ca.pem"}"
cert_file = "{d / "gw.pem"}"
key_file = "{d / "gw.key"}"
{extra}
"""


def test_minimal_config_gets_defaults(files: Path) -> None:
    cfg = load_config(write(files, base(files)))
    assert cfg.uplink.port == 8883
    assert int(cfg.buffer.max_bytes) == 256 * 1024 * 1024
    assert cfg.buffer_path == Path("/var/lib/outpost/buffer.db")


def test_sizes_take_units(files: Path) -> None:
    cfg = load_config(write(files, base(files) + '[buffer]\nmax_bytes = "64MiB"\n'))
    assert int(cfg.buffer.max_bytes) == 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ("gateway_id = 1", "not valid TOML"),
        ('[[sources]]\ntype = "host"\ninterval = 0\n', "sources.0.host.interval"),
        ('[[sources]]\ntype = "snmp"\n', "sources.0"),
        ("[uplink]\nportt = 1\n", "unknown key"),
        ("", None),
    ],
)
def test_errors_name_the_file_and_the_key(files: Path, body: str, words: str | None) -> None:
    text = (
        base(files) + body
        if not body.startswith("[uplink]")
        else base(files).replace("[uplink]", body.strip() + "\n")
    )
    if body == "gateway_id = 1":
        text = "gateway_id = = 1"
    if words is None:
        load_config(write(files, text))
        return
    with pytest.raises(ConfigError) as err:
        load_config(write(files, text))
    assert str(files / "agent.toml") in str(err.value)
    assert words in str(err.value)


def test_gateway_id_must_fit_a_topic_level(files: Path) -> None:
    with pytest.raises(ConfigError, match="gateway_id: must be 1-64"):
        load_config(write(files, base(files, gateway="gw/1")))


def test_missing_certificate_file_is_named(files: Path) -> None:
    (files / "gw.key").unlink()
    with pytest.raises(ConfigError, match=r"uplink.key_file: .*gw.key does not exist"):
        load_config(write(files, base(files)))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file; pass --config"):
        load_config(tmp_path / "nope.toml")


def test_devices_are_checked_against_their_profiles(files: Path) -> None:
    ok = (
        base(files)
        + '[[devices]]\nname = "site"\nprofile = "tasmota"\ntarget = "mqtt://10.0.0.2"\npassword = "pw"\n'
    )
    cfg = load_config(write(files, ok))
    assert cfg.devices[0].password is not None
    assert "pw" not in repr(cfg)  # secrets do not print
    with pytest.raises(ConfigError, match=r"devices\.0.*unknown profile 'tasmotta'"):
        load_config(write(files, ok.replace('"tasmota"', '"tasmotta"')))
    with pytest.raises(ConfigError, match=r"reads over mqtt; use mqtt://host\[:port\]"):
        load_config(write(files, ok.replace("mqtt://10.0.0.2", "https://10.0.0.2")))
    twice = ok + '[[devices]]\nname = "site"\nprofile = "esphome"\ntarget = "mqtt://10.0.0.3"\n'
    with pytest.raises(ConfigError, match="names must be unique; repeated: site"):
        load_config(write(files, twice))


@pytest.mark.parametrize(
    ("device", "words"),
    [
        (
            'profile = "pfsense-snmp"\ntarget = "snmp://fw"',
            "needs community \\(v2c\\) or snmp_user",
        ),
        (
            'profile = "pfsense-snmp"\ntarget = "snmp://fw"\ncommunity = "c"\nsnmp_user = "u"',
            "either community .* or snmp_user",
        ),
        (
            'profile = "pfsense-snmp"\ntarget = "snmp://fw"\nsnmp_user = "u"\npriv_key = "long-enough"',
            "priv_key needs auth_key",
        ),
        (
            'profile = "pfsense-snmp"\ntarget = "snmp://fw"\nsnmp_user = "u"\nauth_key = "short"',
            "auth_key must be at least 8 characters",
        ),
        (
            'profile = "pfsense-snmp"\ntarget = "snmp://fw"\nsnmp_user = "u"\n'
            'auth_key = "long-enough"\nauth_protocol = "SHA1"',
            "auth_protocol",
        ),
        ('profile = "pfsense-rest"\ntarget = "https://fw"', "needs api_key"),
        ('profile = "unifi-network"\ntarget = "https://unifi"\nusername = "ro"', "UniFi needs"),
        ('profile = "unifi-network"\ntarget = "snmp://unifi"\napi_key = "k"', "reads over http"),
    ],
    ids=[
        "no-snmp-credentials",
        "v2c-and-v3",
        "priv-without-auth",
        "short-key",
        "unknown-auth-protocol",
        "pfsense-rest-without-key",
        "unifi-without-password",
        "unifi-over-snmp",
    ],
)
def test_device_credentials_are_checked(files: Path, device: str, words: str) -> None:
    body = base(files) + f'[[devices]]\nname = "d1"\n{device}\n'
    with pytest.raises(ConfigError, match=words):
        load_config(write(files, body))


def test_device_secrets_never_print(files: Path) -> None:
    body = base(files) + (
        '[[devices]]\nname = "fw"\nprofile = "pfsense-snmp"\ntarget = "snmp://fw"\n'
        'snmp_user = "outpost"\nauth_key = "auth-secret-1"\npriv_key = "priv-secret-1"\n'
        '[[devices]]\nname = "ctl"\nprofile = "unifi-network"\ntarget = "https://unifi"\n'
        'username = "ro"\npassword = "unifi-secret-1"\nsite = "branch"\ninsecure = true\n'
        '[[devices]]\nname = "fw2"\nprofile = "pfsense-snmp"\ntarget = "snmp://fw2"\n'
        'community = "community-secret-1"\n'
    )
    cfg = load_config(write(files, body))
    shown = repr(cfg) + str(cfg.model_dump()) + cfg.model_dump_json()
    for secret in ("auth-secret-1", "priv-secret-1", "unifi-secret-1", "community-secret-1"):
        assert secret not in shown
    assert cfg.devices[1].site == "branch"
    assert cfg.devices[0].auth_key is not None
    assert cfg.devices[0].auth_key.get_secret_value() == "auth-secret-1"
