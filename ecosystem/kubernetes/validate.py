#!/usr/bin/env python3
"""Validates ecosystem/kubernetes/ offline, the way an API server would, plus lull's own rules.

- Built-in kinds (Deployment, Service, ConfigMap, PodDisruptionBudget) against the Kubernetes
  OpenAPI schemas that the `kubernetes-validate` package ships (strict: unknown fields fail).
- ServiceMonitor, PrometheusRule and ScaledObject against the openAPIV3Schema of their real CRDs,
  taken from the Prometheus Operator's and KEDA's source modules (fetched once from the Go module
  proxy into the cache directory; strict as well).
- lull's rules: probes on /health/live and /health/ready, a grace period above the drain timeout,
  a numeric non-root user, a read-only root filesystem, resources, never more replicas than
  partitions, the alert rules identical to prometheus/alerts.yml.
- Then it breaks a copy of the manifests on purpose and checks each break is caught, so a
  validator that passes everything cannot go unnoticed.

Usage: validate.py CACHE_DIR   (needs kubernetes-validate and PyYAML; check.sh provides them)
"""

import copy
import io
import os
import sys
import urllib.request
import zipfile

import jsonschema
import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
KUBERNETES = "1.33.0"
# (module path, version, file inside the module, kind): the CRDs of the kinds lull ships.
CRDS = [
    ("github.com/prometheus-operator/prometheus-operator", "v0.85.0",
     "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml", "ServiceMonitor"),
    ("github.com/prometheus-operator/prometheus-operator", "v0.85.0",
     "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml", "PrometheusRule"),
    ("github.com/kedacore/keda/v2", "v2.18.1",
     "config/crd/bases/keda.sh_scaledobjects.yaml", "ScaledObject"),
]


def crd_schemas(cache):
    """kind -> (apiVersion, JSON schema) from the real CRDs, fetched once into `cache`."""
    proxy = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0]
    if proxy in ("direct", "off"):
        proxy = "https://proxy.golang.org"
    out = {}
    for module, version, path, kind in CRDS:
        local = os.path.join(cache, "crds", module.replace("/", "_") + "@" + version, path)
        if not os.path.exists(local):
            url = f"{proxy}/{module}/@v/{version}.zip"
            with urllib.request.urlopen(url, timeout=120) as r:
                data = r.read()
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                text = z.read(f"{module}@{version}/{path}")
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with open(local, "wb") as f:
                f.write(text)
        crd = yaml.safe_load(open(local))
        assert crd["spec"]["names"]["kind"] == kind, local
        group = crd["spec"]["group"]
        for v in crd["spec"]["versions"]:
            if v.get("served"):
                out[kind] = (f"{group}/{v['name']}", strict(v["schema"]["openAPIV3Schema"]))
    return out


def strict(schema):
    """A CRD schema that, like the API server with field validation Strict, refuses unknown fields
    (where the schema does not say it keeps them)."""
    schema = copy.deepcopy(schema)

    def walk(s):
        if not isinstance(s, dict):
            return
        if ("properties" in s and "additionalProperties" not in s
                and not s.get("x-kubernetes-preserve-unknown-fields")):
            s["additionalProperties"] = False
        for p in s.get("properties", {}).values():
            walk(p)
        if isinstance(s.get("items"), dict):
            walk(s["items"])
        if isinstance(s.get("additionalProperties"), dict):
            walk(s["additionalProperties"])
        for k in ("allOf", "anyOf", "oneOf"):
            for sub in s.get(k, []):
                walk(sub)

    walk(schema)
    return schema


def load():
    """Every manifest the kustomization lists, as (file, document)."""
    k = yaml.safe_load(open(os.path.join(HERE, "kustomization.yaml")))
    docs = []
    for name in k["resources"]:
        for d in yaml.safe_load_all(open(os.path.join(HERE, name))):
            if d:
                docs.append((name, d))
    return docs


def schema_errors(docs, crds):
    """What the schemas refuse."""
    errors = []
    for name, d in docs:
        kind = d.get("kind")
        if kind in crds:
            api, schema = crds[kind]
            if d.get("apiVersion") != api:
                errors.append(f"{name}: {kind} apiVersion {d.get('apiVersion')}, CRD serves {api}")
            for e in jsonschema.Draft7Validator(schema).iter_errors(d):
                errors.append(f"{name}: {'/'.join(map(str, e.absolute_path))}: {e.message}")
        else:
            try:
                kubernetes_validate.validate(d, KUBERNETES, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{name}: {'/'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{name}: no schema for {kind}: {e}")
    return errors


def millis(value):
    return int(str(value))


def rule_errors(docs):
    """lull's own rules for its manifests."""
    errors = []
    by = {d["kind"]: d for _, d in docs}
    config = by["ConfigMap"]["data"]
    dep = by["Deployment"]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    labels = dep["spec"]["template"]["metadata"]["labels"]

    def need(ok, why):
        if not ok:
            errors.append(why)

    probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in
              ("livenessProbe", "readinessProbe")}
    need(probes == {"livenessProbe": "/health/live", "readinessProbe": "/health/ready"},
         f"probes must be /health/live and /health/ready, are {probes}")
    drain = millis(config.get("LULL_DRAIN_TIMEOUT_MS", 10000))
    need(pod.get("terminationGracePeriodSeconds", 30) * 1000 >= drain + 5000,
         f"terminationGracePeriodSeconds must exceed LULL_DRAIN_TIMEOUT_MS ({drain} ms) by 5 s")
    sec = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    need(sec.get("runAsNonRoot") is True and isinstance(sec.get("runAsUser"), int)
         and sec["runAsUser"] > 0, "must run as a numeric non-root user")
    need(sec.get("readOnlyRootFilesystem") is True, "root filesystem must be read-only")
    need(sec.get("allowPrivilegeEscalation") is False, "privilege escalation must be off")
    res = c.get("resources", {})
    need(res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
         and res.get("limits", {}).get("memory"), "cpu/memory requests and a memory limit")
    limit = res.get("limits", {}).get("memory", "0Mi")
    need(limit.endswith("Mi") and int(limit[:-2]) * 2**20 > 2 * millis(config["LULL_MAX_OPEN_BYTES"]),
         f"memory limit {limit} must leave room above LULL_MAX_OPEN_BYTES")
    env = {e["name"]: e for e in c.get("env", [])}
    need(env.get("LULL_INSTANCE_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
         == "metadata.name", "LULL_INSTANCE_ID must be the pod name")
    need(env.get("LULL_HTTP_ADDR", {}).get("value", "").startswith("0.0.0.0:"),
         "LULL_HTTP_ADDR must listen on every interface for the probes")
    for kind in ("PodDisruptionBudget", "Service"):
        sel = by[kind]["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        need(all(labels.get(k) == v for k, v in sel.items()), f"{kind} selects no lull pod")
    port_names = {p["name"] for p in by["Service"]["spec"]["ports"]}
    need(all(e["port"] in port_names for e in by["ServiceMonitor"]["spec"]["endpoints"]),
         "ServiceMonitor endpoints must name a Service port")
    alerts = yaml.safe_load(open(os.path.join(HERE, "..", "prometheus", "alerts.yml")))
    need(by["PrometheusRule"]["spec"]["groups"] == alerts["groups"],
         "prometheusrule.yaml differs from prometheus/alerts.yml: regenerate it")
    so = by["ScaledObject"]["spec"]
    need(so["scaleTargetRef"]["name"] == dep["metadata"]["name"], "ScaledObject targets another Deployment")
    (t,) = so["triggers"]
    m = t["metadata"]
    need(t["type"] == "kafka" and m.get("allowIdleConsumers", "false") == "false",
         "KEDA must never scale past the partition count (allowIdleConsumers false)")
    need(m["consumerGroup"] == config["LULL_GROUP_ID"] and m["topic"] == config["LULL_INPUT_TOPIC"],
         "KEDA watches another group or topic than lull-config names")
    need(so["minReplicaCount"] <= so["maxReplicaCount"], "min replicas above max")
    return errors


def breaks():
    """Deliberate mistakes, each of which must be caught."""
    def edit(kind, f):
        def apply(docs):
            for _, d in docs:
                if d["kind"] == kind:
                    f(d)
            return docs
        return apply

    def container(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    return {
        "unknown Deployment field": edit("Deployment", lambda d: container(d).update(imagePullPolicyy="Always")),
        "bad probe port type": edit("Deployment", lambda d: container(d)["livenessProbe"]["httpGet"].update(port=[1])),
        "unknown ScaledObject field": edit("ScaledObject", lambda d: d["spec"].update(maxReplicas=3)),
        "ServiceMonitor interval type": edit("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(interval=15)),
        "PrometheusRule drift": edit("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"].pop()),
        "grace below drain": edit("Deployment", lambda d: d["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=5)),
        "root user": edit("Deployment", lambda d: d["spec"]["template"]["spec"]["securityContext"].update(runAsUser=0)),
        "idle consumers": edit("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].update(allowIdleConsumers="true")),
    }


def main():
    cache = sys.argv[1]
    crds = crd_schemas(cache)
    docs = load()
    errors = schema_errors(docs, crds) + rule_errors(docs)
    for e in errors:
        print("  " + e)
    missed = [name for name, brk in breaks().items()
              if not (schema_errors(brk(copy.deepcopy(docs)), crds) + rule_errors(brk(copy.deepcopy(docs))))]
    for m in missed:
        print(f"  a deliberate mistake went unnoticed: {m}")
    kinds = sorted({d["kind"] for _, d in docs})
    if errors or missed:
        sys.exit(1)
    print(f"{len(docs)} manifests ({', '.join(kinds)}) valid against Kubernetes {KUBERNETES} and the "
          f"CRDs; {len(breaks())} deliberate mistakes caught")


if __name__ == "__main__":
    main()
