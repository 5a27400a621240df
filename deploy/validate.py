#!/usr/bin/env python3
"""Offline checks of deploy/: run by deploy/validate.sh inside its venv.

1. Every YAML document in deploy/kubernetes/*.yaml (duplicate keys refused)
   validates in strict mode (unknown fields are errors) against the pinned
   Kubernetes versions' schemas shipped in kubernetes-validate. Kinds it has no
   schema for must have one in deploy/schemas/ (ServiceMonitor); any other
   kind is an error, never a silent pass.
2. Cross-references that no schema sees: selectors match pod labels, named
   ports exist, Ingress/HPA/PDB/ServiceMonitor targets exist, the admin port is
   not reachable through an Ingress, every APPSYNC_RELAY_* name is one the
   relay reads (from src/), the grace period outlasts drain delay + timeout.
3. deploy/aws/*.yaml: cfn-lint (pinned) on every CloudFormation template, every
   APPSYNC_RELAY_* name one the relay reads, and in ecs-fargate.yaml what the
   relay needs: /readyz on the admin port for the target group, the admin
   listener not on loopback, the stop timeout above drain delay + timeout,
   the deregistration delay above an HTTP publish's deadlines, the ALB idle
   timeout >= AppSync's 300 s, the
   /event rule, secrets only through Secrets Manager.
4. deploy/Dockerfile: structure (pinned bases, numeric non-root USER, no ADD,
   --locked, every COPY source exists, stand-ins for explicit Cargo targets,
   include_str!/include_bytes! stay inside src/). hadolint runs separately.

Prints problems, one per line, and a one-line summary; exits 1 on any problem.
"""

from __future__ import annotations

import glob
import ipaddress
import json
import os
import re
import subprocess
import sys
import tomllib

import jsonschema
import kubernetes_validate.utils as kv
import yaml
from referencing import Registry, Resource

K8S_VERSIONS = ["1.30", "1.37"]  # oldest supported cluster, newest schema shipped
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPLOY = os.path.join(ROOT, "deploy")
MANIFESTS = os.path.join(DEPLOY, "kubernetes")
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}
# Files applied together (names refer across them). A file not listed is its
# own bundle. Services that a bundle routes to but does not define, with the
# port names they are expected to have.
BUNDLES = [["sidecar.yaml"], ["standalone.yaml", "ingress.yaml"]]
EXTERNAL_SERVICES = {"ingress.yaml": {"web": {"http"}}}
RELAY_REQUIRED_ENV = [
    "APPSYNC_RELAY_APPSYNC_HTTP_ENDPOINT",
    "APPSYNC_RELAY_COGNITO_USER_POOL_ID",
    "APPSYNC_RELAY_COGNITO_CLIENT_ID",
    "APPSYNC_RELAY_ALLOWED_ORIGINS",
    "APPSYNC_RELAY_ADMIN_LISTEN",
]

problems: list[str] = []
checks = 0


def check(cond: bool, msg: str) -> bool:
    global checks
    checks += 1
    if not cond:
        problems.append(msg)
    return cond


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML keeps the last)."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def relay_env_names() -> set[str]:
    names = set()
    for path in glob.glob(os.path.join(ROOT, "src", "**", "*.rs"), recursive=True):
        with open(path) as f:
            names.update(re.findall(r'"(APPSYNC_RELAY_[A-Z0-9_]+)"', f.read()))
    return names


# ---------------------------------------------------------------- schemas --


def crd_validator(path: str, version: str):
    """jsonschema validator for a local CRD schema, with kubernetes-validate's
    strict definitions of the pinned version for ObjectMeta & co."""
    defs_dir = f"kubernetes-json-schema/v{version}.0-local-strict/_definitions.json"
    defs = kv.schema_contents(defs_dir, version)
    with open(path) as f:
        schema = json.load(f)
    registry = Registry().with_resources(
        [
            ("https://kubernetes.io/api/_definitions.json", Resource.from_contents(defs)),
            (schema["$id"], Resource.from_contents(schema)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate_schema(doc: dict, where: str) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    for version in K8S_VERSIONS:
        if key in CRD_SCHEMAS:
            validator = crd_validator(os.path.join(DEPLOY, "schemas", CRD_SCHEMAS[key]), version)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
            check(
                not errors,
                f"{where}: {'; '.join(f'{_path(e.path)}: {e.message}' for e in errors[:3])}"
                f" (schema deploy/schemas/{CRD_SCHEMAS[key]}, metadata as kubernetes {version})",
            )
            continue
        try:
            kv.validate(doc, version, strict=True)
            check(True, "")
        except kv.ValidationError as e:
            check(False, f"{where}: {_path(e.path)}: {e.message} (kubernetes {e.version}, strict)")
        except kv.SchemaNotFoundError as e:
            check(False, f"{where}: {e.message}; add a schema to deploy/schemas/ and CRD_SCHEMAS")


def _path(p) -> str:
    return ".".join(str(x) for x in p) or "(root)"


# ---------------------------------------------------------- cross checks --


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_map(container: dict) -> dict:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def port_of(listen: str | None) -> int | None:
    m = re.fullmatch(r"(?:\[[^\]]+\]|[^:]*):(\d+)", listen or "")
    return int(m.group(1)) if m else None


def is_relay(container: dict) -> bool:
    return "appsync-relay" in container.get("image", "") or container.get("name") == "appsync-relay"


def cross_check(bundle_name: str, docs: list[tuple[str, dict]], known_env: set[str]) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for where, d in docs:
        name = d.get("metadata", {}).get("name")
        check(name not in by_kind.setdefault(d["kind"], {}), f"{where}: duplicate {d['kind']}/{name} in {bundle_name}")
        by_kind[d["kind"]][name] = d
    deployments = by_kind.get("Deployment", {})
    services = by_kind.get("Service", {})
    external = {}
    for f in bundle_name.split("+"):
        external.update(EXTERNAL_SERVICES.get(f, {}))

    admin_ports = {}  # deployment name -> admin containerPort number
    for name, dep in deployments.items():
        where = f"{bundle_name}: Deployment/{name}"
        spec = dep["spec"]
        tpl = spec["template"]
        labels = tpl.get("metadata", {}).get("labels", {})
        check(matches(spec["selector"].get("matchLabels", {}), labels), f"{where}: selector does not match the pod labels")
        pod = tpl["spec"]
        pod_sc = pod.get("securityContext", {})
        relays = [c for c in pod["containers"] if is_relay(c)]
        check(len(relays) == 1, f"{where}: expected exactly one appsync-relay container")
        for c in relays:
            cw = f"{where} container {c['name']}"
            env = env_map(c)
            for n in RELAY_REQUIRED_ENV:
                check(n in env, f"{cw}: {n} is required")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            admin = port_of(env.get("APPSYNC_RELAY_ADMIN_LISTEN"))
            listen = port_of(env.get("APPSYNC_RELAY_LISTEN", "0.0.0.0:8080"))
            check(
                not (env.get("APPSYNC_RELAY_ADMIN_LISTEN") or "127.").startswith(("127.", "localhost", "[::1]")),
                f"{cw}: APPSYNC_RELAY_ADMIN_LISTEN must not be loopback in a pod (probes come from the node)",
            )
            check(ports.get("admin") == admin, f"{cw}: port 'admin' ({ports.get('admin')}) != APPSYNC_RELAY_ADMIN_LISTEN port ({admin})")
            check(ports.get("http") == listen, f"{cw}: port 'http' ({ports.get('http')}) != APPSYNC_RELAY_LISTEN port ({listen})")
            admin_ports[name] = admin
            for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
                get = c.get(probe, {}).get("httpGet", {})
                port = get.get("port")
                check(get.get("path") == path, f"{cw}: {probe} must GET {path}")
                check(ports.get(port, port) == admin, f"{cw}: {probe} must use the admin port")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            delay = int(env.get("APPSYNC_RELAY_DRAIN_DELAY") or 5)
            timeout = int(env.get("APPSYNC_RELAY_DRAIN_TIMEOUT") or 30)
            check(grace > delay + timeout, f"{where}: terminationGracePeriodSeconds {grace} <= drain delay {delay} + drain timeout {timeout}")
            sc = c.get("securityContext", {})
            check(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{cw}: runAsNonRoot")
            check(sc.get("runAsUser", pod_sc.get("runAsUser")) not in (None, 0), f"{cw}: runAsUser must be set and non-zero (image uses 65532)")
            check(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem")
            check(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation: false")
            check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cw}: capabilities drop ALL")
            check("limits" in c.get("resources", {}) and "requests" in c["resources"], f"{cw}: resources requests and limits")
            for addr in (env.get("APPSYNC_RELAY_TRUST_FORWARDED") or "").split(","):
                if addr.strip():
                    try:
                        ipaddress.ip_network(addr.strip(), strict=False)
                        check(True, "")
                    except ValueError:
                        check(False, f"{cw}: APPSYNC_RELAY_TRUST_FORWARDED entry {addr!r} is not an IP/CIDR")
            upstream = env.get("APPSYNC_RELAY_APP_UPSTREAM")
            if upstream:
                check(upstream.startswith("http://127.0.0.1:") or upstream.startswith("http://localhost:"),
                      f"{cw}: APPSYNC_RELAY_APP_UPSTREAM in a sidecar should be the pod's loopback")
        for c in pod["containers"]:
            for p in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = c.get(p, {}).get("httpGet", {}).get("port")
                if isinstance(port, str):
                    check(port in {q.get("name") for q in c.get("ports", [])}, f"{where} container {c['name']}: {p} port {port!r} not declared")

    def service_pods(svc):
        return [(n, d) for n, d in deployments.items()
                if matches(svc["spec"].get("selector", {}), d["spec"]["template"].get("metadata", {}).get("labels", {}))]

    ingress_backends = set()
    for name, ing in by_kind.get("Ingress", {}).items():
        for rule in ing["spec"].get("rules", []):
            for p in rule.get("http", {}).get("paths", []):
                b = p["backend"]["service"]
                port = b["port"].get("name", b["port"].get("number"))
                ingress_backends.add((b["name"], port))
                if b["name"] in external:
                    check(port in external[b["name"]], f"{bundle_name}: Ingress/{name} -> {b['name']}:{port}: port not expected on the external Service")
                    continue
                svc = services.get(b["name"])
                if check(svc is not None, f"{bundle_name}: Ingress/{name} -> Service {b['name']} not defined"):
                    check(any(sp.get("name", sp["port"]) == port or sp["port"] == port for sp in svc["spec"]["ports"]),
                          f"{bundle_name}: Ingress/{name} -> Service {b['name']} has no port {port!r}")

    for name, svc in services.items():
        where = f"{bundle_name}: Service/{name}"
        pods = service_pods(svc)
        if not check(bool(pods), f"{where}: selector matches no Deployment in the bundle"):
            continue
        for dep_name, dep in pods:
            cports = {p.get("name"): p["containerPort"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
            for sp in svc["spec"]["ports"]:
                tp = sp.get("targetPort", sp["port"])
                check(tp in cports or tp in cports.values(), f"{where}: targetPort {tp!r} is no container port of {dep_name}")
                number = cports.get(tp, tp)
                if number == admin_ports.get(dep_name):
                    exposed = [b for b in ingress_backends if b[0] == name and b[1] in (sp.get("name"), sp["port"])]
                    check(not exposed, f"{where}: admin port reachable through an Ingress")
                    check(svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{where}: admin port on a {svc['spec'].get('type')} Service")

    for kind in ("HorizontalPodAutoscaler",):
        for name, hpa in by_kind.get(kind, {}).items():
            t = hpa["spec"]["scaleTargetRef"]
            check(t["kind"] == "Deployment" and t["name"] in deployments, f"{bundle_name}: {kind}/{name} target {t['kind']}/{t['name']} not defined")
            check(hpa["spec"].get("minReplicas", 1) >= 2, f"{bundle_name}: {kind}/{name}: minReplicas < 2 leaves no replica during a drain")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        sel = pdb["spec"]["selector"].get("matchLabels", {})
        hit = [d for d in deployments.values() if matches(sel, d["spec"]["template"]["metadata"].get("labels", {}))]
        if check(bool(hit), f"{bundle_name}: PodDisruptionBudget/{name} selects no Deployment"):
            check(pdb["spec"].get("minAvailable", 0) < hit[0]["spec"].get("replicas", 1),
                  f"{bundle_name}: PodDisruptionBudget/{name}: minAvailable >= replicas blocks every drain")
    for name, sm in by_kind.get("ServiceMonitor", {}).items():
        sel = sm["spec"]["selector"].get("matchLabels", {})
        hit = [s for s in services.values() if matches(sel, s.get("metadata", {}).get("labels", {}))]
        if check(bool(hit), f"{bundle_name}: ServiceMonitor/{name} selects no Service"):
            for ep in sm["spec"]["endpoints"]:
                check(all(ep.get("port") in {p.get("name") for p in s["spec"]["ports"]} for s in hit),
                      f"{bundle_name}: ServiceMonitor/{name}: port {ep.get('port')!r} not on the selected Service(s)")
                check(ep.get("path", "/metrics") == "/metrics", f"{bundle_name}: ServiceMonitor/{name}: path must be /metrics")


def check_env_names(path: str, known: set[str]) -> None:
    with open(path) as f:
        used = set(re.findall(r"\bAPPSYNC_RELAY_[A-Z0-9_]*[A-Z0-9]\b", f.read()))
    for n in sorted(used):
        check(n in known, f"{rel(path)}: {n} is not read by the relay (no such name in src/)")


# ------------------------------------------------------------ Dockerfile --


def check_dockerfile(path: str, known_env: set[str]) -> None:
    where = rel(path)
    with open(path) as f:
        text = f.read()
    # Join continuation lines, drop comments.
    logical, buf = [], ""
    for line in text.splitlines():
        if not buf and line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        if buf and line.lstrip().startswith("#"):
            continue
        logical.append((buf + line).strip())
        buf = ""
    instrs = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in logical if l]
    froms = [a for i, a in instrs if i == "FROM"]
    check(len(froms) >= 2, f"{where}: expected a multi-stage build")
    for a in froms:
        image = a.split()[0]
        tag = image.rsplit("/", 1)[-1]
        check(":" in tag or "@sha256:" in image, f"{where}: FROM {image} has no tag")
        check(not tag.endswith(":latest"), f"{where}: FROM {image} uses :latest")
    check(froms[-1].split()[0].startswith("gcr.io/distroless/cc-debian12:nonroot"), f"{where}: runtime stage must be distroless cc-debian12:nonroot")
    check(froms[0].split()[0].endswith("-bookworm") or "bookworm" in froms[0], f"{where}: build stage must be Debian 12 (bookworm) to match the runtime's glibc")
    check(not any(i == "ADD" for i, _ in instrs), f"{where}: use COPY, not ADD")
    last_stage = max(k for k, (i, _) in enumerate(instrs) if i == "FROM")
    users = [a for i, a in instrs[last_stage:] if i == "USER"]
    check(bool(users) and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]) is not None,
          f"{where}: final stage needs a numeric non-root USER (runAsNonRoot verifies it)")
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        cargo = tomllib.load(f)
    bins = [b["name"] for b in cargo.get("bin", [])] or [cargo["package"]["name"]]
    runs = [a for i, a in instrs if i == "RUN" and "cargo build" in a]
    check(bool(runs), f"{where}: no cargo build")
    for r in runs:
        check("--locked" in r and "--release" in r, f"{where}: cargo build needs --release --locked")
        m = re.search(r"--bin\s+(\S+)", r)
        check(m is not None and m.group(1) in bins, f"{where}: cargo build --bin must name one of {bins}")
    # Explicit targets outside src/ need a stand-in before the dependency build.
    for kind, default_dir in (("bench", "benches"), ("test", "tests"), ("example", "examples")):
        for t in cargo.get(kind, []):
            p = t.get("path", f"{default_dir}/{t['name']}.rs")
            if not p.startswith("src/"):
                check(p in text, f"{where}: Cargo.toml [[{kind}]] {t['name']} needs a stand-in {p} in the dependency layer")
    for i, a in instrs:
        if i == "COPY" and "--from=" not in a:
            args = json.loads(a) if a.startswith("[") else a.split()
            for src in args[:-1]:
                if src.startswith("--"):
                    continue
                check(os.path.exists(os.path.join(ROOT, src)), f"{where}: COPY source {src} does not exist in the repo")
    check(re.search(r"^COPY\s+src\s+\S*src/?\s*$", "\n".join(logical), re.M) is not None,
          f"{where}: copy src/ whole (include_str! assets live there)")
    # include_str!/include_bytes! must stay inside src/, or the COPY misses them.
    for rs in glob.glob(os.path.join(ROOT, "src", "**", "*.rs"), recursive=True):
        with open(rs) as f:
            for inc in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', f.read()):
                target = os.path.normpath(os.path.join(os.path.dirname(rs), inc))
                check(target.startswith(os.path.join(ROOT, "src") + os.sep) and os.path.exists(target),
                      f"{rel(rs)}: include of {inc} is outside src/ or missing: the image build would miss it")
    entry = [a for i, a in instrs if i == "ENTRYPOINT"]
    check(bool(entry) and entry[-1].startswith("["), f"{where}: ENTRYPOINT in exec form")
    if entry:
        binary = json.loads(entry[-1])[0]
        check(any(i == "COPY" and "--from=" in a and a.split()[-1] == binary for i, a in instrs[last_stage:]),
              f"{where}: ENTRYPOINT {binary} is not what the runtime stage copies in")
    exposed = {p for i, a in instrs if i == "EXPOSE" for p in a.split()}
    check({"8080", "9090"} <= exposed, f"{where}: EXPOSE 8080 9090")
    check_env_names(path, known_env)


# ------------------------------------------------------------------ main --


# ------------------------------------------------------------------ AWS --

AWS = os.path.join(DEPLOY, "aws")


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags (`!Ref x` -> {"Ref": x})."""


def _cfn_tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def cfn_env(container: dict) -> dict:
    """A container's environment: name -> value (an intrinsic stays a dict);
    entries behind Fn::If are taken from their first branch."""
    out = {}
    for e in container.get("Environment", []):
        if isinstance(e, dict) and "Fn::If" in e:
            e = e["Fn::If"][1]
        if isinstance(e, dict) and "Name" in e:
            out[e["Name"]] = e.get("Value")
    return out


def check_aws(known_env: set[str]) -> int:
    """cfn-lint on every template, then what the relay needs of them."""
    files = sorted(glob.glob(os.path.join(AWS, "*.yaml")))
    check(bool(files), "no templates in deploy/aws/")
    lint = os.path.join(os.path.dirname(sys.executable), "cfn-lint")
    run = subprocess.run([lint, *files], capture_output=True, text=True)
    check(run.returncode == 0, "cfn-lint: " + (run.stdout + run.stderr).strip().replace("\n", " | "))
    for path in files:
        check_env_names(path, known_env)
    with open(os.path.join(AWS, "ecs-fargate.yaml")) as f:
        t = yaml.load(f, Loader=CfnLoader)
    res = t["Resources"]
    task = res["TaskDefinition"]["Properties"]
    containers = []
    for c in task["ContainerDefinitions"]:
        if isinstance(c, dict) and "Fn::If" in c:
            c = c["Fn::If"][1]
        containers.append(c)
    relay = next(c for c in containers if c.get("Name") == "appsync-relay")
    env = cfn_env(relay)
    where = "deploy/aws/ecs-fargate.yaml: appsync-relay"
    for n in RELAY_REQUIRED_ENV:
        check(n in env, f"{where}: {n} is required")
    admin = port_of(env.get("APPSYNC_RELAY_ADMIN_LISTEN"))
    check(not str(env.get("APPSYNC_RELAY_ADMIN_LISTEN", "127.")).startswith("127."),
          f"{where}: the admin listener must not be loopback (the ALB health check comes from outside the task)")
    tg = res["RelayTargetGroup"]["Properties"]
    check(str(tg.get("HealthCheckPort")) == str(admin) and tg.get("HealthCheckPath") == "/readyz",
          f"{where}: the target group must check /readyz on the admin port {admin}")
    check(tg.get("Port") == port_of(env.get("APPSYNC_RELAY_LISTEN")),
          f"{where}: the target group's port must be APPSYNC_RELAY_LISTEN's")
    drain = int(env.get("APPSYNC_RELAY_DRAIN_DELAY") or 5) + int(env.get("APPSYNC_RELAY_DRAIN_TIMEOUT") or 30)
    check(int(relay.get("StopTimeout", 30)) > drain, f"{where}: StopTimeout must exceed the drain ({drain} s)")
    # ECS deregisters before SIGTERM: the delay is what requests in flight
    # get, so it must outlast an HTTP publish (body, then AppSync's answer).
    attrs = {a["Key"]: a["Value"] for a in tg.get("TargetGroupAttributes", [])}
    publish = int(env.get("APPSYNC_RELAY_BODY_TIMEOUT") or 10) + int(env.get("APPSYNC_RELAY_UPSTREAM_TIMEOUT") or 10)
    check(int(attrs.get("deregistration_delay.timeout_seconds", 300)) > publish,
          f"{where}: the deregistration delay must outlast an HTTP publish ({publish} s)")
    lb = {a["Key"]: a["Value"] for a in res["LoadBalancer"]["Properties"]["LoadBalancerAttributes"]}
    check(int(lb.get("idle_timeout.timeout_seconds", 60)) >= 300,
          "deploy/aws/ecs-fargate.yaml: the ALB idle timeout must be >= AppSync's connectionTimeoutMs (300 s)")
    rule = res["EventsRule"]["Properties"]["Conditions"][0]["PathPatternConfig"]["Values"]
    check(sorted(rule) == ["/event", "/event/realtime"], f"deploy/aws/ecs-fargate.yaml: the listener rule must send exactly /event and /event/realtime: {rule}")
    secrets = {"APPSYNC_RELAY_COGNITO_CLIENT_SECRET"}
    check(not (secrets & set(env)), f"{where}: secrets come from Secrets Manager (Secrets), never Environment")
    for name, value in env.items():
        check(not (isinstance(value, str) and re.search(r"(?i)password|secret", name) and value and not value.startswith("/")),
              f"{where}: {name} holds a literal secret")
    return len(files)


def main() -> int:
    known_env = relay_env_names()
    templates = check_aws(known_env)
    files = sorted(glob.glob(os.path.join(MANIFESTS, "*.yaml")))
    check(bool(files), "no manifests in deploy/kubernetes/")
    docs_by_file: dict[str, list[tuple[str, dict]]] = {}
    ndocs = 0
    for path in files:
        name = os.path.basename(path)
        try:
            with open(path) as f:
                docs = [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]
        except yaml.YAMLError as e:
            check(False, f"{rel(path)}: {e}".replace("\n", " "))
            continue
        docs_by_file[name] = []
        for n, d in enumerate(docs, 1):
            where = f"{rel(path)} #{n} {d.get('kind') if isinstance(d, dict) else '?'}/{(d.get('metadata') or {}).get('name') if isinstance(d, dict) else '?'}"
            if not check(isinstance(d, dict) and "apiVersion" in d and "kind" in d, f"{where}: not a Kubernetes object"):
                continue
            ndocs += 1
            validate_schema(d, where)
            docs_by_file[name].append((where, d))
        check_env_names(path, known_env)

    listed = {f for b in BUNDLES for f in b}
    bundles = [b for b in BUNDLES if all(f in docs_by_file for f in b)]
    bundles += [[f] for f in docs_by_file if f not in listed]
    for b in bundles:
        try:
            cross_check("+".join(b), [x for f in b for x in docs_by_file[f]], known_env)
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            # Only reachable when a document is schema-invalid too.
            check(False, f"{'+'.join(b)}: cross-check could not read a field: {e!r}")
    for f in listed - set(docs_by_file):
        check(False, f"deploy/kubernetes/{f}: listed in BUNDLES but missing")

    check_dockerfile(os.path.join(DEPLOY, "Dockerfile"), known_env)

    if os.environ.get("DEPLOY_HADOLINT_RC", "0") != "0":
        problems.append("deploy/Dockerfile: hadolint findings above")
    for p in problems:
        print(f"FAIL {p}")
    status = "valid" if not problems else f"INVALID ({len(problems)} problem(s))"
    print(
        f"deploy: {ndocs} documents {status} (kubernetes {' + '.join(K8S_VERSIONS)} strict, "
        f"kubernetes-validate {kv.__version__}, ServiceMonitor via deploy/schemas), "
        f"{templates} CloudFormation templates (cfn-lint), "
        f"{checks} checks, Dockerfile {'ok' if not any('Dockerfile' in p for p in problems) else 'FAILED'}"
        + (f" (hadolint {os.environ['DEPLOY_HADOLINT']})" if os.environ.get("DEPLOY_HADOLINT") else "")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
