#!/usr/bin/env python3
"""Offline checks of Kubernetes manifests (run by scripts/check-deploy.sh).

    validate-manifests.py [--rendered] [--k8s-version V]... FILE...

Every YAML document of every FILE is validated:
  * built-in kinds against the Kubernetes JSON schemas shipped by kubernetes-validate (PyPI), in
    strict mode (an unknown field is an error), for each --k8s-version (default: 1.30 and the
    newest the package knows); a kind without a schema is an error;
  * the Prometheus Operator's PrometheusRule and PodMonitor (CRDs, for which kubernetes-validate
    has no schema) against the small schemas below, and each PrometheusRule's groups with
    `promtool check rules` when promtool is installed.
With --rendered the files are one complete `kubectl kustomize` output, and the objects are also
checked against each other and against what messages-broker needs (see check_rendered).
Prints every problem; exit 1 if there was any.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml
from referencing import Registry, Resource

ROLES = {"applier", "api", "ingester", "retrier", "stats", "scheduler"}
# Created by the operator, not by kustomize (secret.example.yaml).
EXTERNAL_SECRET = "messages-broker-secrets"

_STR = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STR}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS},
}
_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": _STR,
        "record": _STR,
        "expr": {"anyOf": [_STR, {"type": "integer"}]},
        "for": _DURATION,
        "keep_firing_for": _DURATION,
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
# After monitoring.coreos.com/v1 of prometheus-operator (the fields used here, strict).
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": _STR,
            "kind": _STR,
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["groups"],
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["name", "rules"],
                            "properties": {
                                "name": _STR,
                                "interval": _DURATION,
                                "limit": {"type": "integer"},
                                "labels": _LABELS,
                                "rules": {"type": "array", "minItems": 1, "items": _RULE},
                            },
                        },
                    }
                },
            },
        },
    },
    ("monitoring.coreos.com/v1", "PodMonitor"): {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": _STR,
            "kind": _STR,
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["selector", "podMetricsEndpoints"],
                "properties": {
                    "selector": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
                    },
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": _STR,
                    "podMetricsEndpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": _STR,
                                "path": _STR,
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                            },
                        },
                    },
                },
            },
        },
    },
}


class Report:
    def __init__(self):
        self.errors = []

    def error(self, where, message):
        self.errors.append(f"{where}: {message}")
        print(f"ERROR {where}: {message}")


def where_of(path, doc):
    kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
    name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc, dict) else "?"
    return f"{path} {kind}/{name}"


def error_path(err):
    return ".".join(str(p) for p in err.absolute_path) or "(top)"


def validate_crd(doc, where, report):
    schema = CRD_SCHEMAS[(doc.get("apiVersion"), doc.get("kind"))]
    problems = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=error_path)
    for err in problems:
        report.error(where, f"{error_path(err)}: {err.message}")
    if problems or doc["kind"] != "PrometheusRule":
        return
    promtool = shutil.which("promtool")
    if not promtool:
        print(f"note  {where}: promtool not installed, rule expressions not checked")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": doc["spec"]["groups"]}, f)
    try:
        run = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if run.returncode != 0:
        report.error(where, "promtool check rules: " + (run.stdout + run.stderr).strip())


def validate_doc(doc, where, versions, report):
    if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
        report.error(where, "not a Kubernetes object (apiVersion and kind are required)")
        return
    if (doc["apiVersion"], doc["kind"]) in CRD_SCHEMAS:
        validate_crd(doc, where, report)
        return
    for version in versions:
        try:
            problems = k8s_errors(doc, version)
        except kubernetes_validate.SchemaNotFoundError as err:
            report.error(where, err.message)
            continue
        for err in problems:
            report.error(where, f"Kubernetes {version}: {error_path(err)}: {err.message}")


def k8s_errors(doc, version):
    """Every schema error of `doc` (kubernetes_validate.validate stops at the first one): the same
    schema lookup as kubernetes_validate.utils.validate, strict, then jsonschema's iter_errors."""
    utils = kubernetes_validate.utils
    version = [v for v in utils.all_versions()
               if utils.major_minor(v) <= utils.major_minor(version)][-1]
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", doc["apiVersion"])
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    try:
        schema = utils.schema_contents(f"{schema_dir}/{doc['kind'].lower()}-{api_version}.json", version)
    except FileNotFoundError:
        raise kubernetes_validate.SchemaNotFoundError(
            version=utils.major_minor(version), kind=doc["kind"], api_version=doc["apiVersion"])
    definitions = utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return sorted(validator.iter_errors(doc), key=error_path)


def duration_seconds(text):
    """`20s`, `1m30s`, `500ms` -> seconds (the settings' humantime durations used here)."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def projected_files(volume, configmaps):
    """The files a ConfigMap or projected volume shows, by their path in it: {path: text}."""
    sources = volume.get("projected", {}).get("sources", [])
    if "configMap" in volume:
        sources = [{"configMap": volume["configMap"]}]
    files = {}
    for source in sources:
        ref = source.get("configMap")
        if not ref:
            continue
        data = configmaps.get(ref["name"], {}).get("data", {})
        items = ref.get("items")
        if items is None:
            files.update(data)
        else:
            files.update({os.path.normpath(i["path"]): data[i["key"]] for i in items if i["key"] in data})
    return files


def check_rendered(docs, report):
    """Cross-object checks of one rendered kustomization."""
    by_kind = {}
    for where, doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append((where, doc))
    configmaps = {d["metadata"]["name"]: d for _, d in by_kind.get("ConfigMap", [])}
    deployments = by_kind.get("Deployment", [])
    if not deployments:
        report.error("rendered", "no Deployment")
    roles_seen = set()
    pod_labels = []

    for where, dep in deployments:
        spec = dep["spec"]
        template = spec["template"]
        labels = template["metadata"].get("labels", {})
        if not matches(spec["selector"].get("matchLabels"), labels):
            report.error(where, "spec.selector.matchLabels do not match the pod template's labels")
        pod = template["spec"]
        pod_sc = pod.get("securityContext", {})
        if pod.get("enableServiceLinks") is not False:
            report.error(where, "enableServiceLinks must be false (injected MESSAGES_BROKER_*/RABBITMQ_PORT "
                         "variables would be read as settings)")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                report.error(where, f"volume {v['name']}: ConfigMap {v['configMap']['name']} is not rendered")
            for source in v.get("projected", {}).get("sources", []):
                ref = source.get("configMap")
                if ref and ref["name"] not in configmaps:
                    report.error(where, f"volume {v['name']}: projected ConfigMap {ref['name']} is not rendered")
                elif ref:
                    keys = configmaps[ref["name"]].get("data", {})
                    for item in ref.get("items", []):
                        if item["key"] not in keys:
                            report.error(where, f"volume {v['name']}: ConfigMap {ref['name']} has no key {item['key']}")
        containers = pod["containers"]
        ports = {}
        for c in containers:
            cw = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True:
                report.error(cw, "securityContext.readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                report.error(cw, "securityContext.allowPrivilegeEscalation must be false")
            if "ALL" not in (sc.get("capabilities", {}).get("drop") or []):
                report.error(cw, "securityContext.capabilities.drop must hold ALL")
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                report.error(cw, "runAsNonRoot must be true")
            if (sc.get("runAsUser", pod_sc.get("runAsUser")) or 0) == 0:
                report.error(cw, "runAsUser must be set and not 0")
            env = {}
            for source in c.get("envFrom", []):
                ref = source.get("configMapRef")
                if ref:
                    if ref["name"] not in configmaps:
                        report.error(cw, f"envFrom ConfigMap {ref['name']} is not rendered")
                    else:
                        env.update(configmaps[ref["name"]].get("data", {}))
                if source.get("secretRef") and source["secretRef"]["name"] != EXTERNAL_SECRET:
                    report.error(cw, f"envFrom Secret {source['secretRef']['name']} is unknown")
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref and ref["name"] != EXTERNAL_SECRET:
                    report.error(cw, f"env {e['name']}: Secret {ref['name']} is unknown")
                env[e["name"]] = e.get("value", "<from " + ",".join(e.get("valueFrom", {})) + ">")
            roles = {r.strip() for r in env.get("WORKER_ROLES", "").split(",") if r.strip()}
            if not roles:
                report.error(cw, "WORKER_ROLES is not set (the process would run every role)")
            elif roles - ROLES:
                report.error(cw, f"WORKER_ROLES: unknown roles {sorted(roles - ROLES)}")
            roles_seen |= roles
            for name in ("DB_PASSWORD", "RABBITMQ_PASSWORD"):
                if name not in env:
                    report.error(cw, f"{name} is not set")
            for p in c.get("ports", []):
                ports[p.get("name")] = p["containerPort"]
            app_port = env.get("APP_PORT")
            if "http" not in ports:
                report.error(cw, "no container port named http")
            elif app_port is None or int(app_port) != ports["http"]:
                report.error(cw, f"APP_PORT ({app_port}) differs from containerPort http ({ports['http']})")
            for probe, path in (("startupProbe", None), ("livenessProbe", "/api/health"),
                                ("readinessProbe", "/api/ready")):
                got = c.get(probe)
                if not got:
                    report.error(cw, f"no {probe}")
                elif path and got.get("httpGet", {}).get("path") != path:
                    report.error(cw, f"{probe} must GET {path}")
            startup = c.get("startupProbe") or {}
            allowed = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
            if startup and allowed < 30:
                report.error(cw, f"startupProbe allows {allowed} s, less than 30 s")
            # Files the settings point at must be inside a mounted volume.
            mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", [])}
            for var in ("TOPOLOGY_FILE", "CONFIG_FILE"):
                path = env.get(var)
                if path is None:
                    if var == "TOPOLOGY_FILE":
                        report.error(cw, "TOPOLOGY_FILE is not set")
                    continue
                directory, filename = os.path.split(path)
                mount = mounts.get(directory)
                volume = volumes.get(mount["name"]) if mount else None
                if volume is None:
                    report.error(cw, f"{var}={path}: no volume mounted at {directory}")
                    continue
                if "configMap" in volume or "projected" in volume:
                    files = projected_files(volume, configmaps)
                    if filename not in files:
                        report.error(cw, f"{var}={path}: the volume has no file {filename}")
                    elif filename.endswith(".toml"):
                        try:
                            parsed = tomllib.loads(files[filename])
                        except tomllib.TOMLDecodeError as err:
                            report.error(cw, f"{var}={path}: not TOML: {err}")
                            continue
                        # The event schema files the topology names sit beside it in the volume.
                        for i, schema in enumerate(parsed.get("schemas", []) if var == "TOPOLOGY_FILE" else []):
                            wanted = os.path.normpath(schema.get("file", ""))
                            if wanted not in files:
                                report.error(cw, f"{var}={path}: schemas[{i}].file {wanted} is not in the volume")
                            else:
                                try:
                                    json.loads(files[wanted])
                                except ValueError as err:
                                    report.error(cw, f"{var}={path}: schemas[{i}].file {wanted}: not JSON: {err}")
                elif "secret" in volume:
                    items = [i["path"] for i in volume["secret"].get("items", [])]
                    if items and filename not in items:
                        report.error(cw, f"{var}={path}: the Secret volume does not project {filename}")
            shutdown = duration_seconds(env.get("MESSAGES_BROKER_APP__SHUTDOWN_TIMEOUT", "20s"))
            pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pause = int(pre_stop[1]) if len(pre_stop) == 2 and pre_stop[0] == "sleep" else 0
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace <= shutdown + pause:
                report.error(cw, f"terminationGracePeriodSeconds {grace} is not longer than "
                             f"app.shutdown_timeout {shutdown:g} s + preStop {pause} s")
        pod_labels.append((where, labels, ports, roles))

    # The operator's Secret (secret.example.yaml, when passed along) holds every key referred to.
    secrets = [d for _, d in by_kind.get("Secret", []) if d["metadata"]["name"] == EXTERNAL_SECRET]
    for secret in secrets:
        keys = {**secret.get("data", {}), **secret.get("stringData", {})}
        for where, dep in deployments:
            pod = dep["spec"]["template"]["spec"]
            wanted = {e["valueFrom"]["secretKeyRef"]["key"]
                      for c in pod["containers"] for e in c.get("env", [])
                      if (e.get("valueFrom") or {}).get("secretKeyRef", {}).get("name") == EXTERNAL_SECRET}
            wanted |= {i["key"] for v in pod.get("volumes", [])
                       if v.get("secret", {}).get("secretName") == EXTERNAL_SECRET
                       for i in v["secret"].get("items", [])}
            for key in sorted(wanted - set(keys)):
                report.error(where, f"refers to key {key} that the example Secret does not have")
        for key, text in secret.get("stringData", {}).items():
            if key.endswith(".toml"):
                try:
                    clients = tomllib.loads(text).get("auth", {}).get("clients", [])
                except tomllib.TOMLDecodeError as err:
                    report.error(f"Secret/{EXTERNAL_SECRET}", f"{key}: not TOML: {err}")
                    continue
                for i, client in enumerate(clients):
                    if not re.fullmatch(r"[0-9a-fA-F]{64}", client.get("token_sha256", "")):
                        report.error(f"Secret/{EXTERNAL_SECRET}",
                                     f"{key}: auth.clients[{i}].token_sha256 must be 64 hex digits")

    missing = ROLES - roles_seen
    if deployments and missing:
        report.error("rendered", f"no Deployment runs the roles {sorted(missing)}")

    for where, svc in by_kind.get("Service", []):
        selected = [p for p in pod_labels if matches(svc["spec"].get("selector"), p[1])]
        if not selected:
            report.error(where, "its selector matches no Deployment's pods")
        for _, _, ports, roles in selected:
            if "api" not in roles:
                report.error(where, "selects pods without the api role")
            elif "stats" not in roles:
                report.error(where, "selects api pods without the stats role: their queue routes "
                             "would answer 503 stats_unavailable")
            for p in svc["spec"]["ports"]:
                target = p.get("targetPort", p["port"])
                if (isinstance(target, str) and target not in ports) or (
                        isinstance(target, int) and target not in ports.values()):
                    report.error(where, f"targetPort {target} is not a port of the selected pods")
    for where, pdb in by_kind.get("PodDisruptionBudget", []):
        if not any(matches(pdb["spec"]["selector"].get("matchLabels"), p[1]) for p in pod_labels):
            report.error(where, "its selector matches no Deployment's pods")
    if not any("api" in p[3] for p in pod_labels if any(
            matches(d["spec"]["selector"].get("matchLabels"), p[1])
            for _, d in by_kind.get("PodDisruptionBudget", []))):
        report.error("rendered", "no PodDisruptionBudget covers the api pods")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rendered", action="store_true", help="the files are one kustomize output")
    parser.add_argument("--k8s-version", action="append", dest="versions")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    versions = args.versions or ["1.30.0", kubernetes_validate.latest_version()]

    report = Report()
    docs = []
    for path in args.files:
        try:
            with open(path) as f:
                loaded = list(yaml.safe_load_all(f))
        except (OSError, yaml.YAMLError) as err:
            report.error(path, f"cannot read: {err}")
            continue
        for doc in loaded:
            if doc is None:
                continue
            where = where_of(path, doc)
            validate_doc(doc, where, versions, report)
            if isinstance(doc, dict):
                docs.append((where, doc))
    if args.rendered and not report.errors:
        check_rendered(docs, report)
    kinds = sorted({d.get("kind", "?") for _, d in docs})
    if report.errors:
        print(f"{len(report.errors)} problem(s) in {len(docs)} object(s)")
        return 1
    print(f"ok: {len(docs)} object(s) valid against Kubernetes {', '.join(versions)} "
          f"(strict) and the CRD schemas: {', '.join(kinds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
