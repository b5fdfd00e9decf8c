"""The deployment files, checked offline: the Kubernetes overlays render and validate strictly, the
Dockerfile passes hadolint with every ignored rule explained, and the rendered manifests agree
with the real server (probe paths answer, env vars are flags it knows, scaled-on metrics are ones
it exports, the grace period covers the drain). The Grafana dashboard is a well-formed dashboard
model, every overlay provisions it, and every metric and label its queries use is one a real
server exports.

Run by scripts/test.sh with the server binary and the real model.
"""

import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import yaml

from prometheus_client.parser import text_string_to_metric_families
from wickserver import start

BIN, MODEL = sys.argv[1], sys.argv[2]
ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
OVERLAYS = ["cpu", "gpu", "cpu-keda", "cpu-gateway"]
# kubernetes-validate ships the Kubernetes schemas only; these custom resources are checked
# field by field below instead.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject"),
        ("inference.networking.k8s.io/v1", "InferencePool"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute")}
# Objects of the Gateway API Inference Extension's endpoint picker (k8s/components/gateway).
EPP = "endpoint-picker"


def render(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                         check=True, capture_output=True, text=True).stdout
    return out, [d for d in yaml.safe_load_all(out) if d]


def validate(overlay, text, docs):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        r = subprocess.run([str(VENV_BIN / "kubernetes-validate"), "--strict", f.name],
                           capture_output=True, text=True)
    lines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    passed = [l for l in lines if l.startswith("INFO") and " passed for resource " in l]
    unknown = [l for l in lines if "Couldn't find schema for kind" in l]
    other = [l for l in lines if l not in passed and l not in unknown]
    assert r.returncode == 0 and not other, f"{overlay}: {r.returncode}\n" + "\n".join(lines)
    for l in unknown:
        m = re.search(r"kind (\S+) with api version (\S+)", l)
        assert m and (m.group(2), m.group(1)) in CRDS, f"{overlay}: no schema for {l}"
    builtin = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRDS]
    assert len(passed) == len(builtin), f"{overlay}: {len(passed)} of {len(builtin)} passed"
    print(f"{overlay}: {len(passed)} objects valid (--strict), "
          f"{len(unknown)} custom resources checked below")


def hadolint():
    r = subprocess.run([str(VENV_BIN / "hadolint"), str(ROOT / "Dockerfile")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"#\s*hadolint ignore=(\S+)", line.strip())
        if not m:
            continue
        # Each ignored rule is named, with its reason, in the comment block just above.
        block = []
        j = i - 1
        while j >= 0 and lines[j].lstrip().startswith("#"):
            block.append(lines[j])
            j -= 1
        for rule in m.group(1).split(","):
            assert any(rule in b and len(b) > len(rule) + 10 for b in block), \
                f"Dockerfile:{i + 1}: {rule} ignored without a reason"
    print("hadolint: clean, every ignored rule explained")


def component(doc):
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def by_kind(docs):
    """The Wick objects by kind (the endpoint picker's own Deployment, Service, ... apart)."""
    return {d["kind"]: d for d in docs if component(d) != EPP}


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def get(base, path):
    try:
        with urllib.request.urlopen(f"{base}{path}") as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def check_consistency(overlay, docs, server_help, base, metrics_text):
    k = by_kind(docs)
    dep = k["Deployment"]
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (main,) = [c for c in spec["containers"] if c["name"] == "wick"]
    env = env_of(main)
    port_names = {p["name"]: p["containerPort"] for p in main["ports"]}

    # Every WICK_* setting is a flag the server knows.
    for name in env:
        if name.startswith("WICK_"):
            # clap writes `[env: NAME=]`, or `[env: NAME]` for a secret whose value it hides.
            assert f"env: {name}=" in server_help or f"env: {name}]" in server_help, \
                f"{overlay}: {name} is not a `wick serve` flag"
    assert int(env["WICK_PORT"]) == port_names["http"], (env["WICK_PORT"], port_names)

    # Probes: the named port is the server's, and each path answers on the real server.
    for probe, expected in [("startupProbe", "/ready"), ("readinessProbe", "/ready"),
                            ("livenessProbe", "/health")]:
        get_spec = main[probe]["httpGet"]
        assert get_spec["path"] == expected, (probe, get_spec)
        port = get_spec["port"]
        assert port_names.get(port, port) == int(env["WICK_PORT"]), (probe, port)
        status, _ = get(base, get_spec["path"])
        assert status == 200, f"{probe} {get_spec['path']} answered {status}"

    # Draining fits in the grace period: preStop pause + --shutdown-timeout < grace.
    pre_stop = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep", pre_stop
    pause = float(pre_stop[1])
    grace = spec["terminationGracePeriodSeconds"]
    shutdown = float(env["WICK_SHUTDOWN_TIMEOUT"])
    assert grace > pause + shutdown, f"grace {grace} <= {pause} + {shutdown}"

    # The init container fetches into the volume the server reads, with the same image.
    (init,) = spec["initContainers"]
    assert init["image"] == main["image"], (init["image"], main["image"])
    models = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    assert env["WICK_MODEL"].startswith(models["models"] + "/"), env["WICK_MODEL"]
    assert env_of(init)["WICK_MODELS_DIR"] == models["models"]

    # Selectors pick the pods; the Service and the ServiceMonitor meet on the named port.
    labels = pod["metadata"]["labels"]
    for kind in ("Deployment", "PodDisruptionBudget"):
        sel = k[kind]["spec"]["selector"]["matchLabels"]
        assert sel.items() <= labels.items(), (kind, sel, labels)
    svc = k["Service"]
    assert svc["spec"]["selector"].items() <= labels.items()
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["targetPort"] == "http"
    sm = k["ServiceMonitor"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == svc_port["name"] and endpoint["path"] == "/metrics"

    # Scaling: the target is this Deployment and every metric is one the server exports.
    exported = set(re.findall(r"^# TYPE (\S+) ", metrics_text, re.M))
    if "HorizontalPodAutoscaler" in k:
        hpa = k["HorizontalPodAutoscaler"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
        assert all(m["type"] == "Pods" for m in hpa["spec"]["metrics"])
        assert "wick_requests_waiting" in names, names
        for n in names:
            assert n in exported, f"HPA scales on {n}, which the server does not export"
        adapter = yaml.safe_load((ROOT / "k8s" / "prometheus-adapter" / "values.yaml").read_text())
        served = {r["name"]["as"] for r in adapter["rules"]["custom"]}
        assert set(names) <= served, f"prometheus-adapter does not serve {set(names) - served}"
    else:
        so = k["ScaledObject"]
        assert so["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
        for t in so["spec"]["triggers"]:
            for n in re.findall(r"(wick_[a-z_]+)", t["metadata"]["query"]):
                assert n in exported, f"KEDA queries {n}, which the server does not export"

    if "InferencePool" in k:
        check_gateway(overlay, docs, labels, int(env["WICK_PORT"]), exported)

    if overlay == "gpu":
        assert env["WICK_DEVICE"].startswith("cuda:"), env
        assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    else:
        assert env["WICK_DEVICE"] == "cpu", env
        assert "nvidia.com/gpu" not in main["resources"].get("limits", {})
    print(f"{overlay}: manifests agree with the server")


DASHBOARD = ROOT / "k8s" / "components" / "grafana" / "wick-dashboard.json"
# Labels Prometheus adds when it scrapes a pod, and the histogram buckets' own.
SCRAPE_LABELS = {"namespace", "pod", "le"}


def check_dashboard_model(dash):
    """The fields of Grafana's dashboard model that it needs to load and lay out the panels."""
    for field, kind in [("uid", str), ("title", str), ("schemaVersion", int), ("panels", list),
                        ("templating", dict), ("time", dict), ("tags", list)]:
        assert isinstance(dash.get(field), kind), f"dashboard.{field} is not a {kind.__name__}"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    cells = set()
    for p in dash["panels"]:
        assert p["type"] in {"timeseries", "stat", "gauge"}, p["type"]
        assert p["title"] and p["datasource"]["uid"] == "${datasource}", p["title"]
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy") and g["x"] + g["w"] <= 24, (p["title"], g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), (p["title"], refs)
        assert all(t["expr"].strip() for t in p["targets"]), p["title"]


def dashboard_queries(dash):
    yield from (t["expr"] for p in dash["panels"] for t in p["targets"])
    yield from (v["definition"] for v in dash["templating"]["list"] if v["type"] == "query")


def check_dashboard(rendered, metrics_text):
    dash = json.loads(DASHBOARD.read_text())
    check_dashboard_model(dash)
    # Every overlay provisions it, as Grafana's sidecar finds it.
    for overlay, (_, docs) in rendered.items():
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap"
                 and d["metadata"]["name"] == "wick-grafana-dashboard"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1", overlay
        assert json.loads(cm["data"]["wick-dashboard.json"]) == dash, overlay
    # Every series a query names is exported by the server, with the labels the query uses.
    labels = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    used = 0
    for expr in dashboard_queries(dash):
        names = re.findall(r"\b(wick_[a-z_]+)", expr)
        assert names, f"a query names no Wick metric: {expr}"
        for name in names:
            assert name in labels, f"the dashboard queries {name}, which the server does not export"
            used += 1
        for name, matchers in re.findall(r"\b(wick_[a-z_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([a-z_]+)\s*=~?", matchers):
                assert label in labels[name] | SCRAPE_LABELS, f"{name} has no label {label}"
        for group in re.findall(r"\bby \(([^)]*)\)", expr):
            for label in (l.strip() for l in group.split(",")):
                assert label in SCRAPE_LABELS or any(label in labels[n] for n in names), \
                    f"{expr}: no metric it queries has the label {label}"
    print(f"dashboard: {len(dash['panels'])} panels, {used} metric references, all exported")


def traffic_metrics(tmp):
    """/metrics of a server with API keys that has served, refused and rate-limited a request,
    so that the labelled series the dashboard reads all exist."""
    keys = Path(tmp) / "keys"
    keys.write_text("sk-dashboard name=dashboard rpm=1\n")
    proc, base = start(BIN, MODEL, "--api-key-file", str(keys))
    try:
        def ask(body):
            req = urllib.request.Request(
                f"{base}/v1/chat/completions", data=json.dumps(body).encode(), method="POST",
                headers={"content-type": "application/json", "authorization": "Bearer sk-dashboard"})
            try:
                with urllib.request.urlopen(req) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code
        hi = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert ask(hi) == 200
        assert ask(hi) == 429
        status, text = get(base, "/metrics")
        assert status == 200
        return text
    finally:
        proc.kill()
        proc.wait()


def check_gateway(overlay, docs, pod_labels, wick_port, exported):
    """The InferencePool selects the Wick pods on their port and names the EPP's Service; the
    EPP is configured with metrics the server exports and a scheduling config that holds
    together; the HTTPRoute sends to the pool."""
    pool = by_kind(docs)["InferencePool"]["spec"]
    assert pool["selector"]["matchLabels"].items() <= pod_labels.items(), pool["selector"]
    assert [p["number"] for p in pool["targetPorts"]] == [wick_port], pool["targetPorts"]
    epp = {d["kind"]: d for d in docs if component(d) == EPP}
    svc, dep = epp["Service"], epp["Deployment"]
    ref = pool["endpointPickerRef"]
    assert ref["name"] == svc["metadata"]["name"], ref
    assert ref["port"]["number"] in [p["port"] for p in svc["spec"]["ports"]], ref
    assert ref["failureMode"] in ("FailOpen", "FailClose"), ref
    pod = dep["spec"]["template"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (c,) = pod["spec"]["containers"]
    assert pod["spec"]["serviceAccountName"] == epp["ServiceAccount"]["metadata"]["name"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in ports, p
    args = dict(a.removeprefix("--").split("=", 1) for a in c["args"])
    assert args["pool-name"] == by_kind(docs)["InferencePool"]["metadata"]["name"], args
    assert int(args["grpc-port"]) == ref["port"]["number"], args
    for flag in ("total-queued-requests-metric", "total-running-requests-metric",
                 "kv-cache-usage-percentage-metric"):
        assert args[flag] in exported, f"the EPP reads {args[flag]}, which Wick does not export"
    assert args["kv-cache-usage-percentage-metric"] == "wick_kv_cache_usage_ratio"
    # The config file is the mounted ConfigMap's, and its profiles use plugins it declares.
    (mount,) = c["volumeMounts"]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"
             and d["metadata"]["name"] == volume["configMap"]["name"]]
    assert args["config-file"].startswith(mount["mountPath"] + "/"), args["config-file"]
    config = yaml.safe_load(cm["data"][args["config-file"].rsplit("/", 1)[1]])
    assert config["kind"] == "EndpointPickerConfig", config
    declared = {p.get("name", p["type"]) for p in config["plugins"]}
    for profile in config["schedulingProfiles"]:
        for ref in profile["plugins"]:
            assert ref["pluginRef"] in declared, ref
    # The Role lets the EPP watch the pods and its pool.
    rules = epp["Role"]["rules"]
    assert any("pods" in r["resources"] and "watch" in r["verbs"] for r in rules)
    assert any("inferencepools" in r["resources"] and r["apiGroups"] == ["inference.networking.k8s.io"]
               for r in rules)
    route = by_kind(docs)["HTTPRoute"]["spec"]
    backends = [b for rule in route["rules"] for b in rule["backendRefs"]]
    assert backends == [{"group": "inference.networking.k8s.io", "kind": "InferencePool",
                         "name": by_kind(docs)["InferencePool"]["metadata"]["name"]}], backends
    print(f"{overlay}: InferencePool, endpoint picker and HTTPRoute agree with the server")


def main():
    rendered = {o: render(o) for o in OVERLAYS}
    for o, (text, docs) in rendered.items():
        validate(o, text, docs)
    hadolint()

    server_help = subprocess.run([BIN, "serve", "--help"], check=True, capture_output=True,
                                 text=True).stdout
    proc, base = start(BIN, MODEL)
    try:
        status, metrics_text = get(base, "/metrics")
        assert status == 200
        for o, (_, docs) in rendered.items():
            check_consistency(o, docs, server_help, base, metrics_text)
    finally:
        proc.kill()
        proc.wait()
    with tempfile.TemporaryDirectory() as tmp:
        check_dashboard(rendered, traffic_metrics(tmp))
    print("deployment checks passed")


if __name__ == "__main__":
    main()
