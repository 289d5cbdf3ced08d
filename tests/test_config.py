"""goipd check-config: every kind of bad config is refused with a message naming the key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from pydantic import BaseModel

from goipd.config import ConfigError, RawSettings, load_settings, parse_duration, parse_settings

GOOD = """
http:
  listen: "127.0.0.1:8080"
  api_tokens: ["0123456789abcdef-token"]
storage:
  url: "sqlite:///tmp/goipd-test.db"
servers:
  - name: hq
    url: "http://127.0.0.1:9090/hq/"
    username: root
    password: s3cret-pw
    poll_interval: 15s
    timeout: 5s
    hook_token: hook-secret-123
    hook_allow: ["127.0.0.1", "10.0.0.0/24"]
  - name: branch_2
    url: "https://127.0.0.1:9443"
    username: root
    password_env: GOIPD_BRANCH_PW
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(text, source=Path("goipd.yaml"), environ=env or {})
    return info.value.lines()


def test_good_config_resolves_secrets_and_durations() -> None:
    settings = parse_settings(GOOD, environ={"GOIPD_BRANCH_PW": "from-env"})
    hq, branch = settings.servers
    assert hq.url == "http://127.0.0.1:9090/hq"
    assert hq.password.get_secret_value() == "s3cret-pw"
    assert hq.poll_interval == 15.0 and hq.timeout == 5.0
    assert branch.password.get_secret_value() == "from-env"
    assert branch.hook_token is None
    assert settings.http.port == 8080 and settings.http.host == "127.0.0.1"
    assert settings.api_tokens[0].get_secret_value() == "0123456789abcdef-token"


def test_example_config_is_valid(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "config" / "goipd.example.yaml"
    (tmp_path / "tokens").write_text("# operators\n0123456789abcdef-ops\n")
    (tmp_path / "paasoo-secret").write_text("paasoo-secret-value\n")
    env = {
        "GOIPD_HQ_PASSWORD": "x" * 8,
        "GOIPD_SZ_PASSWORD": "z" * 8,
        "GOIPD_TAIPEI_HOOK_TOKEN": "y" * 20,
        "GOIPD_SMSGO_PASSWORD": "smsgo-pw",
        "GOIPD_SMSGO_HOOK_TOKEN": "s" * 20,
        "GOIPD_PAASOO_HOOK_TOKEN": "p" * 20,
        "GOIPD_C123_PASSWORD": "c123-pw",
        "GOIPD_GOIP_A_PASSWORD": "goip-pw",
    }
    settings = parse_settings(example.read_text(), source=tmp_path / "goipd.yaml", environ=env)
    assert [s.name for s in settings.servers] == ["taipei", "shenzhen"]
    assert [t.get_secret_value() for t in settings.api_tokens] == ["0123456789abcdef-ops"]
    assert [p.name for p in settings.providers] == ["smsgo", "paasoo", "c123"]
    assert settings.providers[1].secret.get_secret_value() == "paasoo-secret-value"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        for arg in (field.annotation, *get_args(field.annotation)):
            for inner in (arg, *get_args(arg)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    keys.extend(_keys(inner, f"{prefix}{name}."))
    return keys


def test_example_config_documents_every_key() -> None:
    """Every settings key appears in the example (a secret in one of its three forms)."""
    text = (Path(__file__).parent.parent / "config" / "goipd.example.yaml").read_text()
    written = set(re.findall(r"([a-z0-9_]+):", text))
    missing = []
    for key in dict.fromkeys(_keys(RawSettings)):
        name = key.rsplit(".", 1)[-1]
        base = name.removesuffix("_env").removesuffix("_file")
        if not {base, f"{base}_env", f"{base}_file"} & written:
            missing.append(key)
    assert missing == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # 1 unknown key, at any depth
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password: p, colour: red}",
            "goipd.yaml: servers[0].colour: unknown key",
        ),
        ("htp:\n  listen: '1.2.3.4:80'", "goipd.yaml: htp: unknown key"),
        # 2 bad duration
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password: p, poll_interval: fast}",
            'goipd.yaml: servers[0].poll_interval: expected a duration like 15s, got "fast"',
        ),
        # 3 bare number for a duration (seconds or milliseconds?)
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password: p, timeout: 5}",
            "goipd.yaml: servers[0].timeout: expected a duration like 15s, got 5",
        ),
        # 4 required key missing
        (
            "servers:\n- {name: a, url: 'http://h', password: p}",
            "goipd.yaml: servers[0].username: required key is missing",
        ),
        # 5 bad server name
        (
            "servers:\n- {name: 'Head Office', url: 'http://h', username: u, password: p}",
            "goipd.yaml: servers[0].name: expected 1-32 characters of [a-z0-9_-]",
        ),
        # 6 duplicate server name
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password: p}\n"
            "- {name: a, url: 'http://g', username: u, password: p}",
            'goipd.yaml: servers[1].name: "a" is already used by servers[0]',
        ),
        # 7 two password sources
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password: p, password_env: X}",
            "goipd.yaml: servers[0].password_env: give only one of password / password_env",
        ),
        # 8 no password source
        (
            "servers:\n- {name: a, url: 'http://h', username: u}",
            "goipd.yaml: servers[0].password: required: set one of password / password_env",
        ),
        # 9 environment variable not set
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password_env: GOIPD_NOPE}",
            "goipd.yaml: servers[0].password_env: environment variable GOIPD_NOPE is not set",
        ),
        # 10 password file missing
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password_file: /nonexistent/pw}",
            "goipd.yaml: servers[0].password_file: file /nonexistent/pw does not exist",
        ),
        # 11 bad URL scheme
        (
            "servers:\n- {name: a, url: 'ftp://h', username: u, password: p}",
            'goipd.yaml: servers[0].url: expected an http:// or https:// URL, got "ftp://h"',
        ),
        # 12 credentials in URL
        (
            "servers:\n- {name: a, url: 'http://u:pw@h', username: u, password: p}",
            "goipd.yaml: servers[0].url: credentials belong in username/password",
        ),
        # 12b query, fragment or port a base URL cannot have
        (
            "servers:\n- {name: a, url: 'http://h/x?y=1', username: u, password: p}",
            "goipd.yaml: servers[0].url: expected no query or fragment in the URL, got "
            '"http://h/x?y=1"',
        ),
        (
            "servers:\n- {name: a, url: 'http://h#top', username: u, password: p}",
            'goipd.yaml: servers[0].url: expected no query or fragment in the URL, got "http://h#top"',
        ),
        (
            "servers:\n- {name: a, url: 'http://h:99999', username: u, password: p}",
            "goipd.yaml: servers[0].url: expected a port from 1 to 65535 in the URL, got "
            '"http://h:99999"',
        ),
        # 13 bad listen address
        (
            "http:\n  listen: localhost",
            'goipd.yaml: http.listen: expected "host:port" like "127.0.0.1:8080", got "localhost"',
        ),
        # 14 invalid YAML
        ("servers: [\n", "goipd.yaml: invalid YAML: line"),
        # 15 duplicate key
        (
            "http:\n  listen: '127.0.0.1:1'\nhttp:\n  listen: '127.0.0.1:2'",
            "goipd.yaml: invalid YAML: line 3, column 1: duplicate key 'http'",
        ),
        # 16 wrong type
        ("servers: {name: a}", "goipd.yaml: servers: input should be a valid tuple"),
        # 17 timeout not shorter than the interval
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password: p, poll_interval: 5s,"
            " timeout: 10s}",
            "goipd.yaml: servers[0].timeout: must be shorter than poll_interval (5s), got 10s",
        ),
        # 18 zero duration
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password: p, poll_interval: 0s}",
            "goipd.yaml: servers[0].poll_interval: must be greater than 0s",
        ),
        # 19 unknown storage scheme; the password part of the URL is never echoed
        (
            "storage:\n  url: 'mysql://root:hunter2@db/goipd'",
            'goipd.yaml: storage.url: expected sqlite:///PATH or postgresql://USER@HOST/DB, got "db/goipd"',
        ),
        # 20 bad allowlist entry
        (
            "servers:\n- {name: a, url: 'http://h', username: u, password: p, hook_allow: [nowhere]}",
            "goipd.yaml: servers[0].hook_allow: expected IP addresses or networks like 10.0.0.0/24",
        ),
        # 21 short API token
        (
            "http:\n  listen: '127.0.0.1:1'\n  api_tokens: [short]",
            "goipd.yaml: http.api_tokens[0]: tokens must be at least 16 characters long",
        ),
        # 22 open API on a public address
        (
            "http:\n  listen: '0.0.0.0:8080'",
            "goipd.yaml: http.api_tokens: required when http.listen is not a loopback address",
        ),
        # 23 top level not a mapping
        ("- a\n- b", "goipd.yaml: expected a mapping at the top level"),
        # 25 cloud route without that provider configured
        (
            "routes:\n- via: [{cloud: smsgo}]",
            "goipd.yaml: routes[0].via[0].cloud: provider smsgo is not configured under providers.smsgo",
        ),
        # 26 provider without its secret
        (
            "providers:\n  paasoo: {key: k}",
            "goipd.yaml: providers.paasoo.secret: required: set one of secret / secret_env / secret_file",
        ),
        # 27 c123 polled too often
        (
            "providers:\n  c123: {uid: u, password: p, reply_poll_interval: 1m}",
            "goipd.yaml: providers.c123.reply_poll_interval: c123 allows at most one reply poll per 10m",
        ),
        # 24 bad enum
        ("logging:\n  level: loud", "goipd.yaml: logging.level: input should be"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(text: str, expected: str) -> None:
    found = problems(text)
    assert any(line.startswith(expected) for line in found), found


def test_secret_values_never_appear_in_errors() -> None:
    text = (
        "servers:\n- {name: 'BAD NAME', url: 'http://h', username: u, password: hunter2-pw,"
        " hook_token: [1]}"
    )
    joined = "\n".join(problems(text))
    assert "hunter2-pw" not in joined
    assert "servers[0].hook_token" in joined


def test_password_file_relative_to_credentials_directory(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hq.pw").write_text("from-credentials\n")
    text = "servers:\n- {name: a, url: 'http://h', username: u, password_file: hq.pw}"
    settings = parse_settings(
        text, source=tmp_path / "goipd.yaml", environ={"CREDENTIALS_DIRECTORY": str(creds)}
    )
    assert settings.servers[0].password.get_secret_value() == "from-credentials"
    # Without systemd's credentials directory the name is relative to the config file.
    (tmp_path / "hq.pw").write_text("next-to-config")
    settings = parse_settings(text, source=tmp_path / "goipd.yaml", environ={})
    assert settings.servers[0].password.get_secret_value() == "next-to-config"


def test_world_readable_config_with_inline_secret_warns(tmp_path: Path) -> None:
    path = tmp_path / "goipd.yaml"
    path.write_text("servers:\n- {name: a, url: 'http://h', username: u, password: inline-pw}")
    os.chmod(path, 0o644)
    assert any("readable by every user" in w for w in load_settings(path).warnings)
    os.chmod(path, 0o600)
    assert load_settings(path).warnings == ()


@pytest.mark.parametrize(
    ("text", "seconds"), [("15s", 15), ("2m", 120), ("1h30m", 5400), ("250ms", 0.25), ("1d", 86400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "s", "15 s", "-1s", "1y", "2m x"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a duration like 15s"):
        parse_duration(text)


def test_check_config_command_exit_codes(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers:\n- {name: a, url: 'http://h', username: u, password: p, x: 1}")
    result = subprocess.run(
        [sys.executable, "-m", "goipd", "check-config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"{bad}: servers[0].x: unknown key"
    good = tmp_path / "good.yaml"
    good.write_text(GOOD.replace("password_env: GOIPD_BRANCH_PW", "password: b"))
    good.chmod(0o600)
    result = subprocess.run(
        [sys.executable, "-m", "goipd", "check-config", str(good)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "OK (2 servers)" in result.stdout


# --- the alerting and ha sections ----------------------------------------------------------------


CONFIG = """
servers:
  - {name: hq, url: "http://127.0.0.1:9", username: root, password: pw}
api: {default_region: CN, max_recipients: 3}
alerting:
"""


@pytest.mark.parametrize(
    ("alerting", "expected"),
    [
        (
            "  receivers: {oncall: {to: ['13800138000', '123']}}",
            'alerting.receivers.oncall.to[1]: "123" is not a valid phone number '
            "(default region CN)",
        ),
        ("  receivers: {oncall: {}}", "alerting.receivers.oncall.to: required key is missing"),
        (
            "  receivers: {oncall: {to: []}}",
            "alerting.receivers.oncall.to: tuple should have at least 1 item after validation, "
            "not 0",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], cc: ['13800138001']}}",
            "alerting.receivers.oncall.cc: unknown key",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], max_segments: 0}}",
            "alerting.receivers.oncall.max_segments: input should be greater than or equal to 1",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], route: {server: nope}}}",
            'alerting.receivers.oncall.route.server: no server named "nope"',
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], route: {cloud: smsgo}}}",
            "alerting.receivers.oncall.route.cloud: provider smsgo is not configured under "
            "providers.smsgo",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000'], route: {line: G101}}}",
            "alerting.receivers.oncall.route: give either server (with optional provider or "
            "line) or cloud",
        ),
        (
            "  receivers: {oncall: {to: ['13800138000', '13800138001', '13800138002', "
            "'13800138003']}}",
            "alerting.receivers.oncall.to: at most api.max_recipients (3) numbers",
        ),
        (
            '  receivers: {"on\\tcall": {to: ["13800138000"]}}',
            'alerting.receivers: receiver names are 1-128 printable characters, got "on\tcall"',
        ),
        ("  dedup_window: soon", 'alerting.dedup_window: expected a duration like 15s, got "soon"'),
        ("  rate_limit: {per: 0s}", "alerting.rate_limit.per: must be greater than 0s, got 0s"),
        (
            "  rate_limit: {max_messages: 0}",
            "alerting.rate_limit.max_messages: input should be greater than or equal to 1",
        ),
        ("  page_everyone: true", "alerting.page_everyone: unknown key"),
    ],
)
def test_bad_alerting_config_names_the_key(alerting: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(CONFIG + alerting, source=Path("goipd.yaml"), environ={})
    assert f"goipd.yaml: {expected}" in info.value.lines()


def test_alerting_config_numbers_use_the_default_region() -> None:
    settings = parse_settings(
        CONFIG
        + "  receivers:\n"
        + "    oncall: {to: ['13800138000', '+8613800138000', '+886912345678'],"
        + " route: {server: hq, line: G101}, max_segments: 1}\n"
        + "  dedup_window: 1m\n"
        + "  rate_limit: {max_messages: 3, per: 10m}\n",
        environ={},
    )
    oncall = settings.alerting.receivers["oncall"]
    assert oncall.to == ("+8613800138000", "+886912345678")
    assert oncall.route is not None and oncall.route.line == "G101"
    assert oncall.max_segments == 1
    assert settings.alerting.dedup_window == 60.0
    assert (settings.alerting.rate_limit.max_messages, settings.alerting.rate_limit.per) == (3, 600)
    defaults = parse_settings("", environ={}).alerting
    assert defaults.receivers == {} and defaults.dedup_window == 300.0


def test_ha_config_defaults_and_errors_name_the_key() -> None:
    servers = (
        "servers:\n"
        "- {name: a, url: 'http://h', username: u, password: p, poll_interval: 5s, timeout: 1s}\n"
        "- {name: b, url: 'http://h', username: u, password: p, poll_interval: 2m}\n"
    )
    settings = parse_settings(servers)
    assert settings.ha.instance_id is None and settings.lease_ttl == 5.0
    assert parse_settings("").lease_ttl == 15.0  # no server: the longest default
    fast = "servers: [{name: a, url: 'http://h', username: u, password: p, "
    fast += "poll_interval: 500ms, timeout: 100ms}]\n"
    assert parse_settings(fast).lease_ttl == 1.0
    assert parse_settings(servers + "ha: {instance_id: gw-a.1, lease_ttl: 30s}").lease_ttl == 30.0
    for text, expected in (
        (
            "ha: {instance_id: 'gw a'}",
            'ha.instance_id: expected 1-64 of A-Z a-z 0-9 _ . -, got "gw a"',
        ),
        ("ha: {lease_ttl: 100ms}", "ha.lease_ttl: must be between 300ms and 10m, got 0.1s"),
        ("ha: {lease: 1s}", "ha.lease: unknown key"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_settings(text, source=Path("goipd.yaml"))
        assert info.value.lines() == [f"goipd.yaml: {expected}"]


# --- what the real SMS Server (v1.28.4) needs ---------------------------------------------------

PUBLIC = GOOD.replace(
    'listen: "127.0.0.1:8080"', 'listen: "127.0.0.1:8080"\n  public_url: "https://gw.example.net"'
)


def test_push_urls_longer_than_the_servers_column_are_refused() -> None:
    long_token = "t" * 100
    text = PUBLIC.replace("hook_token: hook-secret-123", f"hook_token: {long_token}")
    (problem,) = problems(text, {"GOIPD_BRANCH_PW": "x"})
    # https://gw.example.net/hooks/goip/hq/inbound?token= is 51 characters, plus the token.
    assert problem.startswith("goipd.yaml: servers[0].hook_token: the push URLs would be 151 ")
    assert "keeps at most 128" in problem and long_token not in problem
    settings = parse_settings(PUBLIC, environ={"GOIPD_BRANCH_PW": "x"})
    assert settings.servers[0].push_urls("https://gw.example.net") == (
        "https://gw.example.net/hooks/goip/hq/status?token=hook-secret-123",
        "https://gw.example.net/hooks/goip/hq/inbound?token=hook-secret-123",
    )
    assert settings.servers[1].push_urls("https://gw.example.net") is None  # no hook_token


def test_send_timeout_defaults_above_a_slow_engine_and_warns_below() -> None:
    settings = parse_settings(GOOD, environ={"GOIPD_BRANCH_PW": "x"})
    assert settings.servers[0].send_timeout == 30.0 and not settings.warnings
    assert settings.servers[0].escape_text and settings.servers[0].max_sends_in_flight == 4
    short = parse_settings(
        GOOD.replace("timeout: 5s", "timeout: 5s\n    send_timeout: 10s"),
        environ={"GOIPD_BRANCH_PW": "x"},
    )
    (warning,) = short.warnings
    assert warning.startswith("servers[0].send_timeout: 10s is not longer than the 15s")


def test_check_config_shows_push_url_lengths_and_push_urls_prints_them(tmp_path: Path) -> None:
    path = tmp_path / "goipd.yaml"
    path.write_text(PUBLIC.replace("password_env: GOIPD_BRANCH_PW", "password: b"))
    path.chmod(0o600)

    def goipd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "goipd", *args], capture_output=True, text=True, check=False
        )

    checked = goipd("check-config", str(path))
    assert checked.returncode == 0, checked.stderr
    assert "servers hq: push URLs 65 and 66 characters" in checked.stdout
    # check-config runs in the systemd unit, into the journal: no token.
    assert "hook-secret-123" not in checked.stdout + checked.stderr
    printed = goipd("push-urls", str(path))
    assert printed.returncode == 0, printed.stderr
    assert "https://gw.example.net/hooks/goip/hq/status?token=hook-secret-123" in printed.stdout
    assert "https://gw.example.net/hooks/goip/hq/inbound?token=hook-secret-123" in printed.stdout
    assert "branch_2: no hook_token" in printed.stdout
    other = goipd("push-urls", str(path), "--base", "http://10.0.0.5:8080/")
    assert "http://10.0.0.5:8080/hooks/goip/hq/status?token=" in other.stdout


# --- API clients and status callbacks -----------------------------------------------------------

TOKEN_A = "plain-token-0123456789"
TOKEN_B = "crm-token-0123456789ab"


def _fingerprint(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()[:12]


def test_api_tokens_may_be_mappings_with_their_clients_defaults(tmp_path: Path) -> None:
    (tmp_path / "crm-secret").write_text("crm-signing-secret-01\n")
    (tmp_path / "tokens").write_text("# more\nfile-token-0123456789\n")
    text = f"""
http:
  listen: "0.0.0.0:8080"
  api_tokens:
    - {TOKEN_A}
    - token_env: CRM_TOKEN
      status_url: "https://crm.example.com/sms/status?ref=goipd"
      status_events: [sent, delivered, failed, sent]
      signing_secret_file: crm-secret
      valid_for: 1h
  api_tokens_file: tokens
callbacks:
  timeout: 5s
  max_in_flight: 8
"""
    settings = parse_settings(text, source=tmp_path / "goipd.yaml", environ={"CRM_TOKEN": TOKEN_B})
    assert [t.get_secret_value() for t in settings.api_tokens] == [
        TOKEN_A,
        TOKEN_B,
        "file-token-0123456789",
    ]
    plain = settings.api_clients[_fingerprint(TOKEN_A)]
    assert (plain.status_url, plain.status_events, plain.valid_for) == (None, None, None)
    assert plain.signing_secret.get_secret_value() == TOKEN_A
    crm = settings.api_clients[_fingerprint(TOKEN_B)]
    assert crm.status_url == "https://crm.example.com/sms/status?ref=goipd"
    assert crm.status_events == ("sent", "delivered", "failed")
    assert crm.signing_secret.get_secret_value() == "crm-signing-secret-01"
    assert crm.valid_for == 3600.0
    from_file = settings.api_clients[_fingerprint("file-token-0123456789")]
    assert from_file.signing_secret.get_secret_value() == "file-token-0123456789"
    assert (settings.callbacks.timeout, settings.callbacks.max_in_flight) == (5.0, 8)
    assert settings.callbacks.allow_private is False
    assert settings.callbacks.give_up_after == 86400.0
    assert settings.callbacks.max_pending_per_receiver == 10_000
    assert settings.inline_secrets  # the plain token is written in the file


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "{status_url: 'https://crm.example/s'}",
            "http.api_tokens[0].token: required: set one of token / token_env / token_file",
        ),
        (
            f"{{token: {TOKEN_B}, token_env: X}}",
            "http.api_tokens[0].token_env: give only one of token / token_env / token_file",
        ),
        (
            "{token: short}",
            "http.api_tokens[0].token: tokens must be at least 16 characters long",
        ),
        (
            f"{{token: {TOKEN_B}, status_url: 'http://127.0.0.1:9000/s'}}",
            "http.api_tokens[0].status_url: 127.0.0.1 is a loopback address",
        ),
        (
            f"{{token: {TOKEN_B}, status_url: 'https://u:pw@crm.example/s'}}",
            "http.api_tokens[0].status_url: must not carry user:password@ credentials",
        ),
        (
            f"{{token: {TOKEN_B}, status_url: 'https://crm.example/s', status_events: [sent, read]}}",
            'http.api_tokens[0].status_events: unknown state "read"',
        ),
        (
            f"{{token: {TOKEN_B}, status_events: [sent]}}",
            "http.api_tokens[0].status_events: has no effect without status_url",
        ),
        (
            f"{{token: {TOKEN_B}, valid_for: soon}}",
            'http.api_tokens[0].valid_for: expected a duration like 15s, got "soon"',
        ),
        (f"{{token: {TOKEN_B}, colour: red}}", "http.api_tokens[0].colour: unknown key"),
    ],
)
def test_api_token_mapping_problems_name_their_key(entry: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(f"http:\n  listen: '127.0.0.1:1'\n  api_tokens: [{entry}]", environ={})
    lines = info.value.lines()
    assert any(line.startswith(f"<config>: {expected}") for line in lines), lines
    # No problem ever echoes a token.
    assert TOKEN_B not in "\n".join(info.value.lines())


def test_the_same_token_twice_is_refused_when_either_has_defaults() -> None:
    text = f"""
http:
  listen: "127.0.0.1:1"
  api_tokens:
    - {TOKEN_B}
    - {{token: {TOKEN_B}, status_url: "https://crm.example/s"}}
"""
    with pytest.raises(ConfigError) as info:
        parse_settings(text, environ={})
    assert info.value.lines() == [
        "<config>: http.api_tokens[1].token: the same token as http.api_tokens[0]"
    ]
    both_plain = parse_settings(
        f"http:\n  listen: '127.0.0.1:1'\n  api_tokens: [{TOKEN_B}, {TOKEN_B}]", environ={}
    )
    assert len(both_plain.api_clients) == 1


def test_loopback_status_urls_pass_with_allow_private() -> None:
    text = f"""
http:
  listen: "127.0.0.1:1"
  api_tokens: [{{token: {TOKEN_B}, status_url: "http://127.0.0.1:9000/s"}}]
callbacks:
  allow_private: true
"""
    settings = parse_settings(text, environ={})
    assert settings.api_clients[_fingerprint(TOKEN_B)].status_url == "http://127.0.0.1:9000/s"


@pytest.mark.parametrize(
    ("callbacks", "expected"),
    [
        ("{timeout: 0s}", "callbacks.timeout: must be greater than 0s"),
        ("{retry_min: 1m, retry_max: 10s}", "callbacks: retry_max (10s) must not be shorter"),
        ("{max_in_flight: 2, max_in_flight_per_receiver: 4}", "callbacks: max_in_flight_per_r"),
        ("{max_pending_per_receiver: 0}", "callbacks.max_pending_per_receiver: input should be"),
        ("{signing_secret_env: NOPE}", "callbacks.signing_secret_env: environment variable NOPE"),
        ("{allow_privat: true}", "callbacks.allow_privat: unknown key"),
    ],
)
def test_callback_settings_problems_name_their_key(callbacks: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(f"callbacks: {callbacks}", environ={})
    assert any(line.startswith(f"<config>: {expected}") for line in info.value.lines()), (
        info.value.lines()
    )


def test_the_callback_signing_secret_resolves_from_the_environment() -> None:
    settings = parse_settings(
        "callbacks: {signing_secret_env: CB}", environ={"CB": "callback-secret-0123"}
    )
    assert settings.callback_secret is not None
    assert settings.callback_secret.get_secret_value() == "callback-secret-0123"
    assert settings.api_clients == {}


# --- SIM operations: devices, balances, remediation ---------------------------------------------


SIM_OPS = """
servers:
  - name: hq
    url: "http://127.0.0.1:9"
    username: root
    password: pw
    groups: {Chunghwa: [G101]}
"""


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "balances: {schedule: 'every day'}",
            "balances.schedule: expected a crontab schedule like",
        ),
        (
            "balances: {checks: [{server: hq, code: '*101#$', pattern: x}]}",
            'balances.checks[0].code: expected a USSD code of 0-9 * # + like *101#, got "*101#$"',
        ),
        (
            "balances: {checks: [{server: hq, code: '*101#', pattern: '(x'}]}",
            "balances.checks[0].pattern: not a regular expression: missing ), unterminated",
        ),
        (
            "balances: {checks: [{server: nope, code: '*101#', pattern: x}]}",
            'balances.checks[0].server: no server named "nope"',
        ),
        (
            "balances: {checks: [{server: hq, provider: FET, code: '*101#', pattern: x}]}",
            'balances.checks[0].provider: servers[hq].groups has no group "FET"',
        ),
        (
            "balances: {checks: [{server: hq, provider: Chunghwa, line: G101, code: '1',"
            " pattern: x}]}",
            "balances.checks[0]: give provider or line, not both",
        ),
        (
            "balances: {checks: [{server: hq, code: '1', pattern: x},"
            " {server: hq, code: '2', pattern: y}]}",
            "balances.checks[1]: the same lines as balances.checks[0]",
        ),
        ("remediation: {cooldown: 0s}", "remediation.cooldown: must be greater than 0s"),
        ("remediation: {max_per_server: 0}", "remediation.max_per_server:"),
    ],
)
def test_sim_operations_problems_name_their_key(section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(SIM_OPS + section, source=Path("goipd.yaml"), environ={})
    assert expected in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("{name: a, url: 'http://d', password: p, lines: {33: G1}}", "ports are 1 to 32, got 33"),
        ("{name: a, url: 'http://d', password: p, lines: {}}", "name at least one port"),
        (
            "{name: a, url: 'http://d', password: p, lines: {1: G1, 2: G1}}",
            "a line ID is given for two ports",
        ),
        (
            "{name: a, url: 'http://u:p@d', password: p, lines: {1: G1}}",
            "servers[0].devices[0].url: credentials belong in username/password",
        ),
        (
            "{name: a, url: 'http://d', lines: {1: G1}}",
            "servers[0].devices[0].password: required",
        ),
        (
            "{name: a, url: 'http://d', password: p, lines: {1: G1}, poll_interval: 5s,"
            " timeout: 5s}",
            "servers[0].devices[0].timeout: must be shorter than poll_interval (5s)",
        ),
    ],
)
def test_device_problems_name_their_key(device: str, expected: str) -> None:
    text = SIM_OPS + f"    devices: [{device}]\n"
    with pytest.raises(ConfigError) as caught:
        parse_settings(text, source=Path("goipd.yaml"), environ={})
    assert expected in str(caught.value), str(caught.value)
    assert "p@d" not in str(caught.value).replace("http://u:p@d", "")


def test_sim_operations_are_resolved() -> None:
    text = SIM_OPS + (
        "    devices: [{name: goip-a, url: 'http://d/', password_env: DEV, lines: {1: G101}}]\n"
        "balances: {checks: [{server: hq, provider: Chunghwa, code: '*101#',"
        " pattern: '(?P<balance>\\d+)', low: 5}]}\n"
        "remediation: {enabled: true, cooldown: 1h}\n"
    )
    settings = parse_settings(text, source=Path("goipd.yaml"), environ={"DEV": "secret-pw"})
    [device] = settings.servers[0].devices
    assert (device.url, device.lines, device.password.get_secret_value()) == (
        "http://d",
        {1: "G101"},
        "secret-pw",
    )
    assert settings.balances.checks[0].low == 5
    assert settings.remediation.enabled and settings.remediation.cooldown == 3600
