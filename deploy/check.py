#!/usr/bin/env python3
"""Checks deploy/'s manifests against the binary they deploy (run by .ci/run).

- Every file parses as YAML.
- Every IMPRESARIO_<SECTION>__<KEY> variable they set names a key of impresario.example.toml
  (which lists every key the binary reads), or is in PENDING: a key the binary does not read yet.
  A PENDING key that the binary now reads fails the check too, so the list stays true.
- The Deployment's probes are /readyz and /healthz on its container's port, which is the port of
  IMPRESARIO_SERVER__LISTEN and of the scrape annotation; the pod's grace period outlasts the
  drain; the Service targets that port and selects the pods.
- The compose file runs PostgreSQL and two replicas that reach it by its service name.

Exits 1 naming each problem, file and place.
"""
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# Keys the manifests set that the binary does not read yet, and who adds them.
PENDING = {}
problems = []


def problem(where, what):
    problems.append(f"{where}: {what}")


def config_keys():
    """section.key for every key of impresario.example.toml, commented-out ones included."""
    keys, section = set(), None
    for line in (ROOT / "impresario.example.toml").read_text().splitlines():
        header = re.match(r"^#?\s*\[([a-z_]+)\]", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if key and section:
            keys.add(f"{section}.{key.group(1)}")
    return keys


def check_variables(where, names, keys):
    for name in names:
        match = re.fullmatch(r"IMPRESARIO_([A-Z_]+?)__([A-Z_]+)", name)
        if not match:
            continue
        key = f"{match.group(1)}.{match.group(2)}".lower()
        if key in keys and key in PENDING:
            problem(where, f"{name}: {key} is read by the binary now; remove it from PENDING "
                    "(deploy/check.py) and from deploy/README.md's list of what is missing")
        elif key not in keys and key not in PENDING:
            problem(where, f"{name}: the binary has no key {key} (impresario.example.toml)")


def check_kubernetes(keys):
    where = "deploy/kubernetes/impresario.yaml"
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes/impresario.yaml").read_text())}
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    check_variables(where, env, keys)
    port = int(env.get("IMPRESARIO_SERVER__LISTEN", ":0").rsplit(":", 1)[1])
    names = {p["name"]: p["containerPort"] for p in container["ports"]}
    if port not in names.values():
        problem(where, f"the container exposes {sorted(names.values())}, the service listens on {port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or names.get(get.get("port"), get.get("port")) != port:
            problem(where, f"{probe} must GET {path} on port {port}, not {get}")
    if pod["metadata"]["annotations"].get("prometheus.io/port") != str(port):
        problem(where, f"prometheus.io/port must be {port}: /metrics is on the API's port")
    drain = int(env.get("IMPRESARIO_SERVER__DRAIN_TIMEOUT_SECS") or 30)
    if pod["spec"].get("terminationGracePeriodSeconds", 30) <= drain:
        problem(where, f"terminationGracePeriodSeconds must outlast the drain ({drain} s)")
    service = docs["Service"]["spec"]
    if service["selector"].items() - pod["metadata"]["labels"].items():
        problem(where, "the Service's selector does not match the pods' labels")
    for p in service["ports"]:
        if names.get(p["targetPort"], p["targetPort"]) != port:
            problem(where, f"the Service targets {p['targetPort']}, the pods listen on {port}")


def check_compose(keys):
    where = "deploy/compose.yaml"
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    replicas = {n: s for n, s in services.items() if n.startswith("impresario")}
    if "postgres" not in services or len(replicas) < 2:
        problem(where, "needs a postgres service and two impresario replicas")
    for name, service in replicas.items():
        env = service.get("environment", {})
        check_variables(f"{where} {name}", env, keys)
        url = env.get("IMPRESARIO_JOURNAL__URL", "")
        host = re.match(r"postgres://[^@]*@([^:/]+)", url)
        if not host or host.group(1) not in services:
            problem(f"{where} {name}", f"the journal URL {url!r} does not name a compose service")


def main():
    keys = config_keys()
    try:
        check_kubernetes(keys)
        check_compose(keys)
    except (yaml.YAMLError, KeyError, IndexError, ValueError) as e:
        problem("deploy/", f"a manifest does not parse or lacks a part: {e!r}")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print("deploy/: manifests parse and match the binary's configuration")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
