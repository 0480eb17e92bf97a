"""Cheap checks on docker/ and deploy/: linters and validators as CI runs them, and the names that
must agree between the server, Prometheus rules, the Grafana dashboard and the autoscaler."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
K8S_VERSION = "1.30.0"
MANIFESTS = sorted((ROOT / "deploy").glob("*.yaml")) + sorted((ROOT / "deploy" / "gpu").glob("*.yaml"))
CRDS = {"kustomization.yaml", "servicemonitor.yaml"}  # no schema in the Kubernetes API


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is not installed (.ci/run installs it)"
    return path


def _exported_names() -> set[str]:
    text = Metrics("m").render().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
            if kind == "counter":
                names.add(name + "_total" if not name.endswith("_total") else name)
    return names


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_hadolint(dockerfile):
    res = subprocess.run([_tool("hadolint"), str(ROOT / "docker" / dockerfile)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_image_contract(dockerfile):
    text = (ROOT / "docker" / dockerfile).read_text()
    assert 'ENTRYPOINT ["d2f", "serve", "--host", "0.0.0.0"]' in text
    assert re.search(r"^USER 10001$", text, re.M) and "EXPOSE 8000" in text
    assert "STOPSIGNAL SIGTERM" in text and "HEALTHCHECK" in text and "/health" in text
    assert "ARG BASE_IMAGE=" in text and "ensure_default_model()" in text  # the model is baked in at build


def test_kubernetes_manifests_validate():
    res = subprocess.run([_tool("kubernetes-validate"), "-k", K8S_VERSION, "--strict", *map(str, MANIFESTS)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    passed = {Path(m.split()[1]).name for m in res.stdout.splitlines() if " passed " in m}
    assert passed == {m.name for m in MANIFESTS} - CRDS


def test_deployment_is_hardened():
    dep = yaml.safe_load((ROOT / "deploy" / "deployment.yaml").read_text())
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    drain = float(yaml.safe_load((ROOT / "deploy" / "configmap.yaml").read_text())["data"]["D2F_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] > drain + 10  # drain plus the preStop pause
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(c) and "preStop" in c["lifecycle"]
    assert any(v["mountPath"] == "/tmp" for v in c["volumeMounts"])


def test_servicemonitor_and_kustomization_shape():
    sm = yaml.safe_load((ROOT / "deploy" / "servicemonitor.yaml").read_text())
    svc = yaml.safe_load((ROOT / "deploy" / "service.yaml").read_text())
    assert sm["spec"]["selector"]["matchLabels"] == svc["metadata"]["labels"]
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    kust = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    assert all((ROOT / "deploy" / r).exists() for r in kust["resources"])


def test_hpa_scales_on_a_metric_the_server_exports():
    hpa = yaml.safe_load((ROOT / "deploy" / "hpa.yaml").read_text())
    name = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = yaml.safe_load(yaml.safe_load((ROOT / "deploy" / "prometheus-adapter-rules.yaml").read_text())
                             ["data"]["config.yaml"])
    rule = adapter["rules"][0]
    assert rule["name"]["as"] == name
    assert rule["seriesQuery"].split("{")[0].strip("'") == name
    assert name in _exported_names()


def _promql_names(text: str) -> set[str]:
    return set(re.findall(r"\b(d2f_[a-z0-9_]+)", text))


def test_dashboard_and_rules_use_exported_metrics():
    exported = _exported_names()
    dash = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "d2f.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    rules = (ROOT / "docker" / "prometheus" / "rules.yml").read_text()
    used = _promql_names(exprs) | _promql_names(rules)
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("outcome", "first block", "end-to-end", "tokens/s", "per forward", "waiting", "kv"):
        assert topic in titles


@pytest.mark.parametrize("args", [["check", "config", "docker/prometheus/prometheus.yml"],
                                  ["check", "rules", "docker/prometheus/rules.yml"]])
def test_promtool(args):
    res = subprocess.run([_tool("promtool"), *args], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


def test_compose_mounts_exist():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"d2f", "prometheus", "grafana"}
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            assert (ROOT / "docker" / vol.split(":")[0]).exists(), vol
    assert compose["services"]["d2f"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_every_serve_flag_has_an_environment_variable(monkeypatch):
    import argparse

    from server import launch

    for flag, kind, default, _ in launch.FLAGS:
        value = "1" if kind is not str else "from-env"
        monkeypatch.setenv(launch._env_name(flag), value)
    parser = argparse.ArgumentParser()
    launch.add_arguments(parser)
    args = vars(parser.parse_args([]))
    for flag, kind, default, _ in launch.FLAGS:
        got = args[flag.replace("-", "_")]
        assert got == (True if kind is bool else kind("1") if kind is not str else "from-env"), flag
