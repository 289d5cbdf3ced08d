"""`make demo`: a simulated fleet and goipd against it, on loopback, until Ctrl-C.

Runs the simulator and goipd as two child processes (as in production, they share nothing but
HTTP) with a generated config under ./var/demo and the embedded SQLite ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from goipd.sim.goip import demo_spec
from goipd.sim.goip.specs import DEMO_USSD

DEMO_DIR = Path("var/demo")
CLOUD_PORTS = {"smsgo": 9091, "smsgo_backup": 9092, "paasoo": 9093, "c123": 9094}
"""The cloud simulators' ports (goipd.sim.cloud_runner); their accounts are its defaults."""
DEMO_HOOK_TOKEN = "demo-cloud-hook-token"  # noqa: S105 - a demo on loopback
DEVICE_PORT = int(os.environ.get("GOIPD_DEMO_DEVICE_PORT", "9095"))
"""Where the simulated GoIP devices serve their status pages."""
BALANCE_PATTERNS = {
    "taipei": r"NT\$(?P<balance>[0-9.,]+)",
    "kaohsiung": r"NT\$(?P<balance>[0-9.,]+)",
    "shenzhen": r"余额为(?P<balance>[0-9.,]+)元",
}


def demo_config(
    sim_port: int, goipd_port: int, state_dir: Path, device_port: int = DEVICE_PORT
) -> dict[str, Any]:
    spec = demo_spec(None)
    servers = [
        {
            "name": server["name"],
            "url": f"http://127.0.0.1:{sim_port}/{server['name']}",
            "username": server["username"],
            "password_file": f"{server['name']}.password",
            "poll_interval": "5s",
            "timeout": "2s",
            "hook_token": f"demo-hook-{server['name']}",
            "hook_allow": ["127.0.0.1"],
            "devices": [
                {
                    "name": device["name"],
                    "url": f"http://127.0.0.1:{device_port}/{device['name']}",
                    "username": "admin",
                    "password_file": "device.password",
                    "lines": {port: line for port, line in enumerate(device["lines"], 1)},
                    "poll_interval": "30s",
                }
                for device in server["devices"]
            ],
        }
        for server in spec["servers"]
    ]
    balance_checks = [
        {
            "server": server["name"],
            "code": DEMO_USSD[server["name"]][0],
            "pattern": BALANCE_PATTERNS[server["name"]],
            "low": 50,
        }
        for server in spec["servers"]
    ]
    cloud = "http://127.0.0.1:{}".format
    return {
        "http": {
            "listen": f"127.0.0.1:{goipd_port}",
            "public_url": f"http://127.0.0.1:{goipd_port}",
        },
        "storage": {"url": f"sqlite:///{(state_dir / 'goipd.db').resolve()}"},
        "logging": {"level": "info", "format": "console"},
        "servers": servers,
        # Balances at start (never read yet), then three times a day; one dead SIM a module
        # reboot brings back within a couple of minutes, the others page.
        "balances": {"checks": balance_checks},
        "remediation": {
            "enabled": True,
            "unregistered_for": "2m",
            "recovery_wait": "3m",
            "cooldown": "6h",
        },
        # Own SIMs first, the cloud when none is usable; China only through c123.
        "routes": [
            {"match": {"country": ["CN"]}, "via": [{"cloud": "c123"}]},
            {"match": {"prefix": ["+886"]}, "via": [{"server": "*"}, {"cloud": "smsgo"}]},
            {"via": [{"server": "*"}, {"cloud": "paasoo"}]},
        ],
        "providers": {
            "smsgo": {
                "username": "goipd",
                "password_file": "smsgo.password",
                "url": f"{cloud(CLOUD_PORTS['smsgo'])}/sms_gw",
                "backup_url": f"{cloud(CLOUD_PORTS['smsgo_backup'])}/sms_gw",
                "hook_token": DEMO_HOOK_TOKEN,
            },
            "paasoo": {
                "key": "paasoo-key",
                "secret_file": "paasoo.secret",
                "url": cloud(CLOUD_PORTS["paasoo"]),
                "hook_token": DEMO_HOOK_TOKEN,
            },
            "c123": {
                "uid": "9999",
                "password_file": "c123.password",
                "url": cloud(CLOUD_PORTS["c123"]),
            },
        },
    }


# The simulated devices' and the cloud simulators' default accounts.
DEMO_SECRETS = {
    "device.password": "admin",
    "smsgo.password": "smsgo-secret",
    "paasoo.secret": "paasoo-secret",
    "c123.password": "c123-password",
}


def write_demo_files(state_dir: Path, sim_port: int, goipd_port: int) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    for server in demo_spec(None)["servers"]:
        secret = state_dir / f"{server['name']}.password"
        secret.write_text(server["password"] + "\n")
        secret.chmod(0o600)
    for name, value in DEMO_SECRETS.items():
        secret = state_dir / name
        secret.write_text(value + "\n")
        secret.chmod(0o600)
    config = state_dir / "goipd.yaml"
    config.write_text(
        "# Generated by `make demo`; edit goipd/sim/demo.py instead.\n"
        + yaml.safe_dump(
            demo_config(sim_port, goipd_port, state_dir), sort_keys=False, allow_unicode=True
        )
    )
    config.chmod(0o600)
    return config


def prometheus_command(state_dir: Path, goipd_port: int, port: int) -> list[str] | None:
    """A Prometheus scraping the demo goipd with the shipped alert rules, if installed."""
    binary = shutil.which("prometheus")
    rules = Path("prometheus/alerts.yml").resolve()
    if binary is None:
        return None
    config = state_dir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
                "rule_files": [str(rules)] if rules.exists() else [],
                "scrape_configs": [
                    {
                        "job_name": "goipd",
                        "static_configs": [{"targets": [f"127.0.0.1:{goipd_port}"]}],
                    }
                ],
            }
        )
    )
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={state_dir / 'prometheus'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]


def _wait_http(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 - loopback URL
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    return False


def main() -> int:
    sim_port = int(os.environ.get("GOIPD_DEMO_SIM_PORT", "9090"))
    goipd_port = int(os.environ.get("GOIPD_DEMO_PORT", "8080"))
    config = write_demo_files(DEMO_DIR, sim_port, goipd_port)
    goipd_url = f"http://127.0.0.1:{goipd_port}"
    sim = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "goipd",
            "simulate",
            "--demo",
            "--port",
            str(sim_port),
            "--push-base",
            goipd_url,
            "--churn-interval",
            "60",
            "--device-port",
            str(DEVICE_PORT),
        ],
    )
    clouds = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "goipd.sim.cloud_runner",
            "--smsgo-port",
            str(CLOUD_PORTS["smsgo"]),
            "--smsgo-backup-port",
            str(CLOUD_PORTS["smsgo_backup"]),
            "--paasoo-port",
            str(CLOUD_PORTS["paasoo"]),
            "--c123-port",
            str(CLOUD_PORTS["c123"]),
            "--paasoo-dlr-url",
            f"{goipd_url}/hooks/paasoo/report?token={DEMO_HOOK_TOKEN}",
        ]
    )
    daemon = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "goipd", "run", "--config", str(config)]
    )
    children = [daemon, sim, clouds]
    prom_port = int(os.environ.get("GOIPD_DEMO_PROMETHEUS_PORT", "9099"))
    prom_command = prometheus_command(DEMO_DIR, goipd_port, prom_port)
    if prom_command is not None:
        log = (DEMO_DIR / "prometheus.log").open("ab")
        children.append(subprocess.Popen(prom_command, stdout=log, stderr=subprocess.STDOUT))  # noqa: S603
    try:
        if not _wait_http(f"{goipd_url}/readyz", time.monotonic() + 30):
            print("goipd did not become ready within 30 s; see its log above", file=sys.stderr)
            return 1
        with urllib.request.urlopen(f"{goipd_url}/api/v1/lines", timeout=5) as resp:  # noqa: S310
            lines = json.load(resp)["lines"]
        print(
            "\n"
            f"  goipd is polling {len(demo_spec(None)['servers'])} simulated SMS Servers "
            f"({len(lines)} lines).\n"
            f"  Lines:    {goipd_url}/api/v1/lines\n"
            f"  Metrics:  {goipd_url}/metrics\n"
            f"  Health:   {goipd_url}/readyz\n"
            f"  Config:   {config}\n"
            f"  Simulator control API: http://127.0.0.1:{sim_port}/_control/servers\n"
            f"  Cloud simulators: smsgo :{CLOUD_PORTS['smsgo']}, PaaSoo :{CLOUD_PORTS['paasoo']}, "
            f"c123 :{CLOUD_PORTS['c123']} (routes: CN via c123, +886 overflow to smsgo, "
            "the rest to PaaSoo)\n"
            + (
                f"  Prometheus: http://127.0.0.1:{prom_port}/alerts (log in {DEMO_DIR})\n"
                if prom_command
                else "  (install Debian's prometheus to get alerts in the demo)\n"
            )
            + "  Lines change state every minute. Balances (USSD) and signal (the devices' "
            "status pages) fill in over the first minutes, and one dead SIM is rebooted back "
            "after two: watch `goipd lines` or the status page.\n"
            "  Ctrl-C stops everything.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()


if __name__ == "__main__":
    raise SystemExit(main())
