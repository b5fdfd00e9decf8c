"""The deployment files, checked offline: the Kubernetes overlays render and validate strictly, the
Dockerfile passes hadolint with every ignored rule explained, and the rendered manifests agree
with the real server (probe paths answer, env vars are flags it knows, scaled-on metrics are ones
it exports, the grace period covers the drain).

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

from wickserver import start

BIN, MODEL = sys.argv[1], sys.argv[2]
ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
OVERLAYS = ["cpu", "gpu", "cpu-keda"]
# kubernetes-validate ships the Kubernetes schemas only; these custom resources are checked
# field by field below instead.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}


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


def by_kind(docs):
    return {d["kind"]: d for d in docs}


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
            assert f"env: {name}=" in server_help, f"{overlay}: {name} is not a `wick serve` flag"
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

    if overlay == "gpu":
        assert env["WICK_DEVICE"].startswith("cuda:"), env
        assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    else:
        assert env["WICK_DEVICE"] == "cpu", env
        assert "nvidia.com/gpu" not in main["resources"].get("limits", {})
    print(f"{overlay}: manifests agree with the server")


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
    print("deployment checks passed")


if __name__ == "__main__":
    main()
