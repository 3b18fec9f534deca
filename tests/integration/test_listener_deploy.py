"""docker/listener/: the systemd unit and the Kubernetes manifests of the
listener, parsed (no systemd or cluster here), and every pgtenancy command
line in them checked against the CLI's own option parser."""

from __future__ import annotations

import configparser
import shlex
import subprocess
from pathlib import Path

import yaml

from conftest import pgtenancy_cli, subprocess_env

DEPLOY = Path(__file__).resolve().parents[2] / "docker" / "listener"


def parses(args: list[str]) -> None:
    """The pgtenancy command ``args`` (without the program) is accepted by the CLI."""
    assert args and args[0] == "pgtenancy", args
    r = subprocess.run(
        [*pgtenancy_cli(), *args[1:], "--help"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    assert r.returncode == 0, (args, r.stderr)


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(DEPLOY / "pgtenancy-listener@.service")
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert service["Restart"] == "always"
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 30
    assert service["EnvironmentFile"] == "/etc/pgtenancy/listener-%i.env"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/pgtenancy")
    assert argv[1:4] == ["listen", "--consumer", "%i"]
    parses(["pgtenancy", *[a.replace("${HANDLERS}", "myapp.handlers") for a in argv[1:]]])
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_kubernetes_manifests() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "CronJob"}
    deployment = kinds["Deployment"]
    spec = deployment["spec"]
    assert spec["replicas"] >= 2  # a standby takes over the lease
    assert spec["selector"]["matchLabels"] == spec["template"]["metadata"]["labels"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["pgtenancy", "listen"]
    parses(args)
    port = int(args[args.index("--metrics-port") + 1])
    assert container["ports"] == [{"name": "metrics", "containerPort": port}]
    assert spec["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    live = container["livenessProbe"]["httpGet"]
    assert live == {"path": "/metrics", "port": "metrics"}
    ready = container["readinessProbe"]["exec"]["command"]
    assert ready[:3] == ["pgtenancy", "events", "health"]
    parses(ready)
    assert pod["terminationGracePeriodSeconds"] >= 30
    job = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (health,) = job["containers"]
    parses(health["args"])
    assert health["envFrom"] == container["envFrom"]
