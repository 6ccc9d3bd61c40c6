#!/usr/bin/env bash
# Checks every deployment asset in ecosystem/ with the tools this machine has:
#   PM2 config (node), docker-compose.yml (docker compose config, else a YAML check),
#   Dockerfile (hadolint if present, else a structural check), lull.service (systemd-analyze),
#   Prometheus rules and config (promtool, else a YAML check), Grafana dashboard (JSON),
#   Kubernetes manifests (kubernetes/validate.py: the API's schemas and the real CRDs, offline).
# Prints what it checked and what it could not; exits non-zero on a real problem.
# The PM2 end-to-end run is ecosystem/pm2/check.sh (needs npm and ~40 s).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
fail=0
ok() { printf '  ok    %s\n' "$*"; }
skip() { printf '  skip  %s\n' "$*"; }
bad() { printf '  FAIL  %s\n' "$*"; fail=1; }

yaml_ok() { python3 -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1]))' "$1" 2>/dev/null; }

if command -v node >/dev/null 2>&1; then
    if out=$(LULL_PM2_INSTANCES=3 LULL_PM2_BASE_PORT=9000 node -e '
        const c = require("./pm2/ecosystem.config.js");
        const ids = new Set(c.apps.map(a => a.env.LULL_INSTANCE_ID));
        const ports = new Set(c.apps.map(a => a.env.LULL_HTTP_ADDR));
        if (c.apps.length !== 3 || ids.size !== 3 || ports.size !== 3) throw new Error("instances not distinct");
        if (!c.apps.every(a => a.kill_timeout > 10000 && a.args === "run")) throw new Error("kill_timeout must exceed the drain");
        if (!c.apps.every(a => (a.stop_exit_codes || []).includes(2))) throw new Error("exit 2 (bad configuration) must not restart: stop_exit_codes");
        console.log(c.apps.map(a => a.name + "@" + a.env.LULL_HTTP_ADDR).join(" "));' 2>&1); then
        ok "pm2/ecosystem.config.js: $out"
    else
        bad "pm2/ecosystem.config.js: $out"
    fi
else
    skip "pm2/ecosystem.config.js (no node)"
fi

if docker compose version >/dev/null 2>&1; then
    docker compose -f docker-compose.yml config -q && ok "docker-compose.yml (docker compose config)" || bad "docker-compose.yml"
elif command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' 2>/dev/null; then
    if python3 - <<'PY'
import yaml
c = yaml.safe_load(open("docker-compose.yml"))
s = c["services"]
for name in ["kafka", "redis", "topics", "lull-1", "lull-2", "prometheus", "grafana"]:
    assert name in s, name
assert s["topics"]["command"][0] == "topics"
shared = c["x-lull-env"]
for n in ["lull-1", "lull-2"]:
    assert s[n]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert s[n]["stop_grace_period"] == "15s"
    env = s[n]["environment"]
    missing = [k for k in shared if k not in env]
    assert not missing, f"{n} lost shared settings {missing}: its environment replaced the shared block"
    assert env["LULL_INSTANCE_ID"] == n
k = s["kafka"]
data = [v.split(":")[1] for v in k["volumes"] if v.startswith("kafka-data:")]
assert data and k["environment"].get("KAFKA_LOG_DIRS") == data[0], "Kafka must keep its log on its volume (KAFKA_LOG_DIRS)"
PY
    then ok "docker-compose.yml (YAML structure; no docker compose here)"; else bad "docker-compose.yml"; fi
else
    skip "docker-compose.yml (no docker compose, no python3-yaml)"
fi

if command -v hadolint >/dev/null 2>&1; then
    hadolint Dockerfile && ok "Dockerfile (hadolint)" || bad "Dockerfile"
else
    grep -q '^FROM .* AS build' Dockerfile && grep -q 'ENTRYPOINT' Dockerfile \
        && ok "Dockerfile (multi-stage; no hadolint here)" || bad "Dockerfile"
fi
# Kubernetes' runAsNonRoot needs a numeric user; a dependency layer keeps rebuilds short.
grep -Eq '^USER [1-9][0-9]*(:[0-9]+)?$' Dockerfile && ok "Dockerfile runs as a numeric non-root user" || bad "Dockerfile: USER must be a numeric non-root uid"
grep -q 'COPY Cargo.toml Cargo.lock' Dockerfile && [ -f ../.dockerignore ] && grep -qx 'target' ../.dockerignore \
    && ok "Dockerfile dependency layer and .dockerignore" || bad "Dockerfile: dependency layer or .dockerignore (target) missing"

grep -qx 'RestartPreventExitStatus=2' systemd/lull.service && ok "systemd/lull.service does not restart on exit 2 (bad configuration)" \
    || bad "systemd/lull.service: RestartPreventExitStatus=2 missing"

if command -v systemd-analyze >/dev/null 2>&1; then
    tmp=$(mktemp -d)
    cp /bin/true "$tmp/lull"
    sed "s#/usr/local/bin/lull#$tmp/lull#" systemd/lull.service > "$tmp/lull.service"
    if out=$(systemd-analyze verify "$tmp/lull.service" 2>&1 | grep -v -e 'Failed to determine' -e 'Cannot add dependency' -e 'Documentation' -e '^$' || true); [ -z "$out" ]; then
        ok "systemd/lull.service (systemd-analyze verify)"
    else
        bad "systemd/lull.service: $out"
    fi
    rm -rf "$tmp"
else
    skip "systemd/lull.service (no systemd-analyze)"
fi

if command -v promtool >/dev/null 2>&1; then
    promtool check rules prometheus/alerts.yml >/dev/null && ok "prometheus/alerts.yml (promtool check rules)" || bad "prometheus/alerts.yml"
    tmp=$(mktemp -d)
    sed "s#/etc/prometheus/alerts.yml#$here/prometheus/alerts.yml#" prometheus/prometheus.yml > "$tmp/prometheus.yml"
    promtool check config "$tmp/prometheus.yml" >/dev/null && ok "prometheus/prometheus.yml (promtool check config)" || bad "prometheus/prometheus.yml"
    rm -rf "$tmp"
elif yaml_ok prometheus/alerts.yml && yaml_ok prometheus/prometheus.yml; then
    ok "prometheus/*.yml (YAML only; install Debian's 'prometheus' for promtool)"
else
    bad "prometheus/*.yml"
fi

if command -v python3 >/dev/null 2>&1; then
    if python3 - <<'PY'
import json, re
d = json.load(open("grafana/lull.json"))
exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
names = set(re.findall(r"lull_[a-z_]+", " ".join(exprs)))
src = open("../src/ops/metrics.rs").read()
missing = [n for n in names if re.sub(r"_(bucket|sum|count)$", "", n) not in src]
assert not missing, missing
# Portable: no hard-coded datasource, every query follows the instance picker.
variables = {v["name"]: v for v in d["templating"]["list"]}
assert variables["datasource"]["type"] == "datasource", variables
assert "instance" in variables, variables
hard = [p["title"] for p in d["panels"] if p["datasource"]["uid"] != "${datasource}"]
assert not hard, f"panels with a hard-coded datasource: {hard}"
unfiltered = [e for e in exprs for m in re.finditer(r"\b(lull|process)_[a-z_]+(\{[^}]*\})?", e)
              if '$instance' not in (m.group(2) or "")]
assert not unfiltered, f"queries that ignore $instance: {unfiltered}"
print(len(d["panels"]), "panels")
PY
    then ok "grafana/lull.json (JSON; every metric it uses exists; \$datasource and \$instance variables)"; else bad "grafana/lull.json"; fi
else
    skip "grafana/lull.json (no python3)"
fi

# Kubernetes manifests, offline: the schemas ship with kubernetes-validate (PyPI), the CRDs of
# ServiceMonitor, PrometheusRule and ScaledObject come from their projects' Go modules (the module
# proxy); both are fetched once into the cache, outside git.
cache=${LULL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lull}
venv="$cache/k8s-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ] && command -v python3 >/dev/null 2>&1; then
    rm -rf "$venv"
    { python3 -m venv "$venv" && "$venv/bin/pip" install --quiet --disable-pip-version-check \
        'kubernetes-validate==1.37.0' 'PyYAML>=6'; } >/dev/null 2>&1 || rm -rf "$venv"
fi
if [ -x "$venv/bin/python" ]; then
    if out=$("$venv/bin/python" kubernetes/validate.py "$cache" 2>&1); then
        ok "kubernetes/: $out"
    else
        bad "kubernetes/:"$'\n'"$out"
    fi
elif [ "${CI:-}" = "true" ]; then
    bad "kubernetes/ (could not install kubernetes-validate from PyPI)"
else
    skip "kubernetes/ (no python3 venv or PyPI here)"
fi

exit $fail
