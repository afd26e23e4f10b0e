"""deploy/ recipes: schema validation, DESIGN §3 "Where the probes go", safety and probed's flags.

Every Kubernetes object in deploy/*/*.yaml is validated against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields, wrong types and missing required fields fail) for
the oldest version each recipe supports (1.29, native sidecars on by default; older for the
classic-sidecar recipe; 1.35 for in-place restarts) and the newest the package knows. Custom
resources (LeaderWorkerSet, RayCluster, ServiceExport, HTTPRoute) have no schema there: their pod
templates are validated against the core PodTemplateSpec schema and their own fields are checked
by hand. Then each pod template is held to the recipes' rules: probes on the server containers at
probed's port (httpGet or grpc), probed's own container probed only on /probed/livez, probed a
native sidecar (one classic recipe excepted), a startup budget of at least 10 minutes, a preStop
drain (exec, never httpGet) that with the server's own shutdown fits the grace period, no admin
listener beyond loopback without a token from a Secret, the in-place restart rule matching
probed's exit code, the multi-node heartbeat wiring, and only flags `python3 -m probed --help`
lists, with `--print-config` accepting each probed container's arguments. The preStop commands
and the worker-process check script are run for real against probed.py and real processes on
loopback. Nothing here contacts a cluster or runs an image.
"""

import functools
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple
from urllib.parse import urlsplit

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (tests/run.sh)")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from probed.values import parse_duration  # noqa: E402  (after making the repo importable)
from conftest import free_port, wait_listening  # noqa: E402

DEPLOY = REPO / "deploy"
RECIPES = ("vllm-sidecar", "vllm-configmap", "tgi-multicluster", "worker-pool",
           "llmd-requester", "lws-multinode", "kuberay", "inplace-restart", "lws-headless",
           "vllm-classic-sidecar", "llamacpp")
OLDEST_KUBERNETES = "1.29"  # restartable init containers (native sidecars) on by default
# Recipes whose oldest Kubernetes differs: the classic sidecar is for clusters before native
# sidecars; restartPolicyRules with RestartAllContainers exist from 1.35 (KEP-5532).
MIN_KUBERNETES = {"vllm-classic-sidecar": "1.25", "inplace-restart": "1.35"}
RESTART_RULES_KUBERNETES = "1.35"
CLASSIC_SIDECAR_RECIPES = frozenset(("vllm-classic-sidecar",))
RUN_TIMEOUT = 60.0
MIN_STARTUP_BUDGET = 600  # seconds: a model download and load must never be cut short
MAX_READINESS_PERIOD = 5  # seconds: readiness changes (shedding, draining) reach the kubelet fast
MAX_PROBED_CPU_MILLI = 50
MAX_PROBED_MEMORY_MI = 128
# probed.py's idle RSS on CPython 3.11-3.13 (bench/footprint.py: 20-21 MB), rounded up.
PROBED_IDLE_RSS_MI = 23
PROBED_SELF_PATH = "/probed/livez"  # probed's own liveness: its loop answers, its pollers deliver
GROUP_PATHS = {
    "startupProbe": ("/startupz",),
    "livenessProbe": ("/livez", "/healthz"),
    "readinessProbe": ("/readyz", "/ready", "/health"),
}
GRPC_SERVICES = {  # grpc.health.v1 service names probed answers for each group
    "startupProbe": ("startup", "startupz"),
    "livenessProbe": ("liveness", "livez"),
    "readinessProbe": ("readiness", "readyz"),
}
PROBE_KINDS = tuple(GROUP_PATHS)
SUBCOMMANDS = ("drain", "beat", "check")
RESTART_ALL = "RestartAllContainers"
# Values for $(VAR) references the environment of a real pod provides (LWS sets these).
SAMPLE_ENV = {"LWS_GROUP_SIZE": "2", "LWS_LEADER_ADDRESS": "vllm-mp-0.vllm-mp.default",
              "LWS_WORKER_INDEX": "1"}
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost", "")
PROBED_PY_MOUNT = "/opt/probed/probed.py"  # where the recipes mount the ConfigMap's probed.py
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_CHECK_URL = re.compile(r"https?://127\.0\.0\.1:(\d+)/(livez|readyz|startupz)/([\w.-]+)")
_DRAIN_URL = re.compile(r"https?://([^/\s'\"]+)/wait-for-drain\?timeout=([0-9a-z.]+)")
_CLIENT_TIMEOUT = re.compile(r"(?:--max-time|-m|-T)\s+\"?(\d+)|timeout=(\d+)\b")
_SHUTDOWN_TIMEOUT = re.compile(r"--shutdown-timeout[= ](\d+)")


# ---------------------------------------------------------------- loading manifests

def manifest_files() -> List[Path]:
    """Every manifest under deploy/ (one or more per recipe directory)."""
    return sorted(DEPLOY.glob("*/*.yaml"))


@functools.lru_cache(maxsize=None)
def load_docs(path: Path) -> Tuple[Dict[str, Any], ...]:
    """The non-empty YAML documents of one manifest file."""
    with open(str(path), encoding="utf-8") as fh:
        return tuple(d for d in yaml.safe_load_all(fh) if d)


def all_docs() -> List[Tuple[str, Dict[str, Any]]]:
    """(file:kind/name, document) for every object in deploy/."""
    out = []
    for path in manifest_files():
        for doc in load_docs(path):
            out.append(("%s:%s/%s" % (path.relative_to(DEPLOY), doc.get("kind"),
                                      doc.get("metadata", {}).get("name")), doc))
    return out


def recipe_of(where: str) -> str:
    """The recipe directory a `where` label points into."""
    return where.split("/", 1)[0]


def pod_templates(doc: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    """(role, PodTemplateSpec) of every pod an object creates, CRDs included."""
    kind, spec = doc.get("kind"), doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return [("pod", spec["template"])]
    if kind == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        out = [("worker", lwt["workerTemplate"])]
        return ([("leader", lwt["leaderTemplate"])] + out) if "leaderTemplate" in lwt else out
    if kind == "RayCluster":
        return [("head", spec["headGroupSpec"]["template"])] + [
            ("worker group " + g["groupName"], g["template"])
            for g in spec.get("workerGroupSpecs", [])]
    return []


def all_templates() -> List[Tuple[str, Dict[str, Any]]]:
    """(where, PodTemplateSpec) for every pod template in deploy/."""
    return [("%s %s" % (where, role), tpl) for where, doc in all_docs()
            for role, tpl in pod_templates(doc)]


def doc_ids(items: List[Tuple[str, Any]]) -> List[str]:
    return [where for where, _ in items]


# ---------------------------------------------------------------- probed's command line

def run_probed(args: List[str]) -> "subprocess.CompletedProcess[str]":
    """`python3 -m probed ARGS` from the repository, output captured."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "probed"] + args, cwd=str(REPO), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=RUN_TIMEOUT)


@functools.lru_cache(maxsize=None)
def help_flags(subcommand: str = "") -> frozenset:
    """The long flags `probed [SUBCOMMAND] --help` documents."""
    res = run_probed(([subcommand] if subcommand else []) + ["--help"])
    assert res.returncode == 0, res.stderr
    return frozenset(_FLAG.findall(res.stdout))


@functools.lru_cache(maxsize=None)
def print_config(argv: Tuple[str, ...]) -> Dict[str, Any]:
    """probed's effective configuration for a container's arguments (exit 0 required)."""
    res = run_probed(list(argv) + ["--print-config"])
    assert res.returncode == 0, "probed %s --print-config: exit %d: %s" % (
        " ".join(argv), res.returncode, res.stderr.strip())
    return json.loads(res.stdout)


def expand_vars(token: str, env: Dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion, from the container's env or a sample value."""
    def value(match: "re.Match[str]") -> str:
        name = match.group(1)
        assert name in env or name in SAMPLE_ENV, "no sample value for $(%s)" % name
        return env.get(name, SAMPLE_ENV.get(name, ""))
    return _VAR_REF.sub(value, token)


def container_env(container: Dict[str, Any]) -> Dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def probed_argv(container: Dict[str, Any]) -> List[str]:
    """The arguments probed itself receives: after probed.py in command+args, or the args of
    the probed image (its ENTRYPOINT runs probed.py)."""
    words = list(container.get("command", [])) + list(container.get("args", []))
    scripts = [i for i, w in enumerate(words) if w.endswith("probed.py")]
    if scripts:
        words = words[scripts[0] + 1:]
    else:
        assert "command" not in container, "%s: the probed image's ENTRYPOINT runs probed.py; " \
            "do not override it" % container["name"]
    env = container_env(container)
    return [expand_vars(w, env) for w in words]


def shell_commands(words: List[str]) -> Iterator[List[str]]:
    """Simple commands inside exec words: the words themselves, or each command of an
    `sh -c SCRIPT` / `bash -c SCRIPT`, split at ; && || | and newlines."""
    if len(words) >= 3 and words[0].endswith("sh") and words[1].startswith("-") and \
            "c" in words[1]:
        script = words[-1]
        for part in re.split(r"&&|\|\||[;|\n]", script.replace("\\\n", " ")):
            try:
                tokens = shlex.split(part, comments=True)
            except ValueError:
                continue
            if tokens:
                yield tokens
    else:
        yield list(words)


def probed_invocations(words: List[str]) -> Iterator[List[str]]:
    """probed argv (after probed.py) of every `... probed.py ...` command in exec words."""
    for tokens in shell_commands(words):
        for i, t in enumerate(tokens):
            if t.endswith("probed.py"):
                yield tokens[i + 1:]


def port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def host_of(addr: str) -> str:
    return addr.rsplit(":", 1)[0].strip("[]")


def exit_rules(text: Optional[str]) -> Dict[str, int]:
    """`--restart-pod-on` as printed by --print-config (`live=75,gpu-live=76`)."""
    return {name: int(code) for name, _, code in
            (part.partition("=") for part in (text or "").split(",") if part)}


# ---------------------------------------------------------------- pod template helpers

def containers(spec: Dict[str, Any]) -> List[Dict[str, Any]]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def the_probed(spec: Dict[str, Any]) -> Dict[str, Any]:
    found = [c for c in containers(spec) if c["name"] == "probed"]
    assert len(found) == 1, "expected one container named probed, found %d" % len(found)
    return found[0]


def probe_budget(probe: Dict[str, Any]) -> int:
    """Seconds a startup probe allows before the kubelet gives up."""
    return (probe.get("initialDelaySeconds", 0)
            + probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10))


def probe_window(probe: Dict[str, Any]) -> int:
    """Seconds of consecutive failures before a probe's verdict changes."""
    return probe.get("failureThreshold", 3) * probe.get("periodSeconds", 10)


def cpu_milli(q: str) -> float:
    return float(q[:-1]) if q.endswith("m") else float(q) * 1000


def memory_mi(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return float(q[:-2]) * factor
    return float(q) / (1024 * 1024)


def secret_of_file(spec: Dict[str, Any], container: Dict[str, Any], path: str) -> Optional[str]:
    """The Secret a file path of this container comes from (None: not from a Secret)."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in spec.get("volumes", [])
               if "secret" in v}
    for mount in container.get("volumeMounts", []):
        if path.startswith(mount["mountPath"].rstrip("/") + "/") and mount["name"] in secrets:
            return secrets[mount["name"]]
    return None


def configmap_file(spec: Dict[str, Any], container: Dict[str, Any],
                   path: str) -> Optional[Tuple[str, str]]:
    """(ConfigMap name, key) a file path of this container comes from, or None."""
    maps = {v["name"]: v["configMap"]["name"] for v in spec.get("volumes", [])
            if "configMap" in v}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) and mount["name"] in maps:
            return maps[mount["name"]], path[len(prefix):]
    return None


def server_shutdown_seconds(c: Dict[str, Any]) -> int:
    """The server's own drain after SIGTERM (vLLM --shutdown-timeout; 0 = abort at once)."""
    found = _SHUTDOWN_TIMEOUT.search(" ".join(c.get("command", []) + c.get("args", [])))
    return int(found.group(1)) if found else 0


class PodModel:
    """One pod template, its probed sidecar and probed's effective configuration."""

    def __init__(self, tpl: Dict[str, Any], where: str = "") -> None:
        self.spec = tpl["spec"]
        self.recipe = recipe_of(where)
        self.probed = the_probed(self.spec)
        self.argv = probed_argv(self.probed)
        self.config = print_config(tuple(self.argv))
        self.port = port_of(self.config["addr"])
        self.admin = self.config.get("admin-addr")
        self.admin_token = self.config.get("admin-token-file")
        self.drain_seconds = parse_duration(self.config["drain-seconds"])
        self.grace = self.spec.get("terminationGracePeriodSeconds", 30)
        self.servers = [c for c in self.spec["containers"] if c["name"] != "probed"]
        self.check_names = {c["name"] for c in self.config["checks"]}
        self.serves_requests = any(c["kind"] == "inflight" for c in self.config["checks"])

    @property
    def admin_beyond_loopback(self) -> bool:
        return bool(self.admin) and host_of(self.admin) not in LOOPBACK_HOSTS


TEMPLATES = all_templates()


class Drain(NamedTuple):
    """What a preStop hook asks of probed's drain."""
    wait: float                 # seconds the hook waits at most
    client_timeout: float       # seconds after which its client gives up
    host: str                   # admin listener host (loopback, or another pod's)
    port: int
    token_file: Optional[str]   # the admin token the call sends, from this file


def parse_prestop(c: Dict[str, Any]) -> Optional[Drain]:
    """The drain a server container's preStop performs; None without a preStop."""
    hook = c.get("lifecycle", {}).get("preStop")
    if hook is None:
        return None
    # The kubelet sends a lifecycle httpGet to the pod IP and cannot read a token from a
    # Secret: that would need an admin listener open beyond loopback without a token.
    assert "exec" in hook, "%s: the preStop drain is an exec hook, never httpGet" % c["name"]
    words = hook["exec"]["command"]
    for argv in probed_invocations(words):
        assert argv and argv[0] == "drain", "preStop runs `probed drain`"
        used = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")}
        assert used <= help_flags("drain"), used - help_flags("drain")
        opts = dict(a.split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
        admin = urlsplit(opts.get("--admin", "http://127.0.0.1:9090"))
        wait = parse_duration(opts.get("--wait", "60s"))
        # `probed drain` gives up 10 s after its --wait when the listener never answers.
        return Drain(wait, wait + 10, admin.hostname or "", admin.port or 80,
                     opts.get("--token-file"))
    text = " ".join(words)
    found = _DRAIN_URL.search(text)
    assert found, "%s: preStop is not a probed drain: %r" % (c["name"], words)
    where = urlsplit("http://" + found.group(1))
    limits = [int(a or b) for a, b in _CLIENT_TIMEOUT.findall(text)]
    assert limits, "%s: the preStop's HTTP client needs a timeout above the wait" % c["name"]
    return Drain(parse_duration(found.group(2)), max(limits), where.hostname or "",
                 where.port or 80, None)


def drains() -> List[Tuple[str, Dict[str, Any], Dict[str, Any]]]:
    """(where, template, server container) for every server container with a preStop."""
    return [("%s %s" % (where, c["name"]), tpl, c) for where, tpl in TEMPLATES
            for c in tpl["spec"]["containers"]
            if c["name"] != "probed" and c.get("lifecycle", {}).get("preStop")]


DRAINS = drains()


# ---------------------------------------------------------------- layout and docs

def test_every_recipe_has_a_manifest_and_a_readme() -> None:
    index = (DEPLOY / "README.md").read_text(encoding="utf-8")
    for recipe in RECIPES:
        assert list((DEPLOY / recipe).glob("*.yaml")), "%s: no manifest" % recipe
        readme = (DEPLOY / recipe / "README.md").read_text(encoding="utf-8")
        assert "terminationGracePeriodSeconds" in readme and "startupProbe" in readme, recipe
        assert "(%s/)" % recipe in index, "deploy/README.md does not link %s/" % recipe
    assert sorted(p.name for p in DEPLOY.iterdir() if p.is_dir()) == sorted(RECIPES)


def test_configmap_and_secrets_are_referenced_by_name_and_their_creation_documented() -> None:
    for path in manifest_files():
        readme = (path.parent / "README.md").read_text(encoding="utf-8")
        text = path.read_text(encoding="utf-8")
        for doc in load_docs(path):
            assert not (doc["kind"] == "ConfigMap" and "probed.py" in doc.get("data", {})), \
                "%s inlines probed.py: reference the ConfigMap by name instead" % path
        if re.search(r"^\s*name: probed\s*(#.*)?$", text, re.M) and "configMap:" in text:
            assert "kubectl create configmap probed --from-file=probed.py" in readme, path
        for secret in set(re.findall(r"secretName: ([\w.-]+)", text)) | set(
                re.findall(r"secretKeyRef:\s*\n\s*name: ([\w.-]+)", text)):
            assert "kubectl create secret generic %s" % secret in readme, (path, secret)


# ---------------------------------------------------------------- schema validation

# API groups served by Kubernetes itself ("" is the core group, apiVersion "v1").
CORE_GROUPS = frozenset(("", "apps", "batch", "policy", "autoscaling", "networking.k8s.io",
                         "rbac.authorization.k8s.io", "scheduling.k8s.io"))


def is_core(doc: Dict[str, Any]) -> bool:
    group = doc["apiVersion"].rpartition("/")[0]
    return group in CORE_GROUPS


CORE_DOCS = [(w, d) for w, d in all_docs() if is_core(d)]
CRD_DOCS = [(w, d) for w, d in all_docs() if not is_core(d)]


def schema_versions(recipe: str) -> List[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate "
                             "(tests/run.sh installs it)")
    return [MIN_KUBERNETES.get(recipe, OLDEST_KUBERNETES), kv.latest_version()]


def validate_strict(doc: Dict[str, Any], where: str) -> None:
    versions = schema_versions(recipe_of(where))  # skips without kubernetes-validate
    import kubernetes_validate as kv

    for version in versions:
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail("%s against Kubernetes %s: %s: %s" % (
                where, version, ".".join(str(p) for p in exc.path), exc.message))


@pytest.mark.parametrize("where,doc", CORE_DOCS, ids=doc_ids(CORE_DOCS))
def test_core_objects_validate_against_the_kubernetes_schema(where: str,
                                                             doc: Dict[str, Any]) -> None:
    validate_strict(doc, where)


def crd_pod_templates() -> List[Tuple[str, Dict[str, Any]]]:
    return [("%s %s" % (w, role), tpl) for w, d in CRD_DOCS for role, tpl in pod_templates(d)]


@pytest.mark.parametrize("where,tpl", crd_pod_templates(), ids=doc_ids(crd_pod_templates()))
def test_custom_resource_pod_templates_validate_as_core_pod_templates(
        where: str, tpl: Dict[str, Any]) -> None:
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "extracted"},
               "template": tpl}
    validate_strict(wrapped, where)


def require(doc: Dict[str, Any], *path: str) -> Any:
    node: Any = doc
    for key in path:
        assert isinstance(node, dict) and key in node, "missing %s" % ".".join(path)
        node = node[key]
    return node


def check_leaderworkerset(doc: Dict[str, Any]) -> None:
    lwt = require(doc, "spec", "leaderWorkerTemplate")
    require(lwt, "workerTemplate", "spec", "containers")
    assert isinstance(lwt.get("size"), int) and lwt["size"] >= 2, "size: an int >= 2"
    assert lwt.get("restartPolicy", "Default") in ("RecreateGroupOnPodRestart", "Default", "None")
    # LeaderReady would wait for a leader that waits for its workers: it never starts.
    assert doc["spec"].get("startupPolicy", "LeaderCreated") == "LeaderCreated"
    assert isinstance(doc["spec"].get("replicas", 1), int)


def check_raycluster(doc: Dict[str, Any]) -> None:
    head = require(doc, "spec", "headGroupSpec")
    groups = [head] + list(doc["spec"].get("workerGroupSpecs", []))
    for group in groups:
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams are strings"
        require(group, "template", "spec", "containers")
    for group in groups[1:]:
        assert isinstance(group.get("groupName"), str), "workerGroupSpecs[].groupName"
        low, n, high = group.get("minReplicas", 0), group.get("replicas", 0), group.get(
            "maxReplicas", 2 ** 31)
        assert low <= n <= high, "minReplicas <= replicas <= maxReplicas"
    assert isinstance(doc["spec"].get("rayVersion"), str)
    for _, tpl in pod_templates(doc):  # KubeRay takes containers[0] as the Ray container
        assert tpl["spec"]["containers"][0]["name"] != "probed"


def check_serviceexport(doc: Dict[str, Any], siblings: List[Dict[str, Any]]) -> None:
    name = require(doc, "metadata", "name")
    assert any(d["kind"] == "Service" and d["metadata"]["name"] == name for d in siblings), \
        "a ServiceExport exports the Service of the same name"


def check_httproute(doc: Dict[str, Any]) -> None:
    for parent in require(doc, "spec", "parentRefs"):
        assert isinstance(parent.get("name"), str)
    for rule in require(doc, "spec", "rules"):
        for ref in rule.get("backendRefs", []):
            assert isinstance(ref.get("name"), str) and isinstance(ref.get("port"), int)


CRD_CHECKS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): check_leaderworkerset,
    ("ray.io/v1", "RayCluster"): check_raycluster,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): check_httproute,
}


@pytest.mark.parametrize("where,doc", CRD_DOCS, ids=doc_ids(CRD_DOCS))
def test_custom_resources_checked_by_hand(where: str, doc: Dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    require(doc, "metadata", "name")
    if key == ("multicluster.x-k8s.io/v1alpha1", "ServiceExport"):
        check_serviceexport(doc, list(load_docs(DEPLOY / where.split(":")[0])))
        return
    assert key in CRD_CHECKS, "%s: %s %s is neither a core kind nor a known CRD" % (where, *key)
    CRD_CHECKS[key](doc)


# ---------------------------------------------------------------- DESIGN §3: where the probes go

@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_probed_runs_as_a_sidecar_probed_only_on_its_own_liveness(where: str,
                                                                   tpl: Dict[str, Any]) -> None:
    pod = PodModel(tpl, where)
    c = pod.probed
    if pod.recipe in CLASSIC_SIDECAR_RECIPES:
        # Before native sidecars: a regular container beside the server (KubeRay and others
        # take containers[0] as theirs, so the server comes first).
        assert c in pod.spec["containers"] and pod.spec["containers"][0] is not c
        assert "restartPolicy" not in c
    else:
        # A native sidecar: started before the server, stopped after it, so its readiness and
        # drain answers outlive the server's SIGTERM.
        assert c in pod.spec.get("initContainers", []) and c.get("restartPolicy") == "Always", \
            "probed runs as a native sidecar (initContainers, restartPolicy: Always)"
    # A readiness or startup probe here would reflect the backend on the wrong container, and
    # a startup probe on a sidecar would even hold the server back until it passed.
    assert "readinessProbe" not in c and "startupProbe" not in c
    # Its liveness reads probed itself (a stuck poller, a wedged loop), so the kubelet restarts
    # probed, not the server, when probed is at fault.
    live = c.get("livenessProbe")
    assert live is not None, "probed's container has a liveness probe of probed itself"
    assert live["httpGet"]["path"] == PROBED_SELF_PATH and live["httpGet"]["port"] == pod.port
    assert live.get("timeoutSeconds", 1) == 1
    assert any(p["containerPort"] == pod.port for p in c.get("ports", [])), \
        "probed's probe port %d is declared on its container" % pod.port


def probe_target(c: Dict[str, Any], kind: str, probe: Dict[str, Any], pod: PodModel) -> None:
    """A server probe must ask probed, on its port, for the group the probe kind stands for."""
    if "grpc" in probe:
        grpc = probe["grpc"]
        assert grpc["port"] == pod.port, "%s %s: grpc port" % (c["name"], kind)
        # Without a service probed answers for `ready`: a liveness probe would then restart a
        # server that is only not ready (loading, draining). Name it every time.
        service = grpc.get("service")
        assert service, "%s %s: grpc probes always name the service" % (c["name"], kind)
        allowed = GRPC_SERVICES[kind] + (tuple(pod.check_names) if kind == "readinessProbe"
                                         else ())
        assert service in allowed, "%s %s: grpc service %r" % (c["name"], kind, service)
        return
    assert "httpGet" in probe, "%s %s: an httpGet or grpc probe of probed" % (c["name"], kind)
    get = probe["httpGet"]
    # Numeric: a named port would be looked up on this container, not on probed's.
    assert get["port"] == pod.port, "%s %s: port %r, probed listens on %d" % (
        c["name"], kind, get["port"], pod.port)
    route = urlsplit(get["path"]).path
    assert route in GROUP_PATHS[kind], "%s %s: path %s" % (c["name"], kind, route)


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_server_probes_target_probeds_port(where: str, tpl: Dict[str, Any]) -> None:
    pod = PodModel(tpl, where)
    ready = 0
    for c in pod.servers:
        for kind in PROBE_KINDS:
            probe = c.get(kind)
            if probe is not None:
                probe_target(c, kind, probe, pod)
                assert probe.get("timeoutSeconds", 1) == 1, "probed answers in microseconds"
        ready += "readinessProbe" in c
    assert ready, "no server container carries a readiness probe"


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_probe_timings(where: str, tpl: Dict[str, Any]) -> None:
    pod = PodModel(tpl, where)
    own = pod.probed["livenessProbe"]
    restart_after = parse_duration(pod.config.get("restart-pod-after", "30s"))
    for c in pod.servers:
        live, start, ready = (c.get(k) for k in ("livenessProbe", "startupProbe",
                                                  "readinessProbe"))
        if live is not None:
            assert start is not None, "%s: liveness without a startup probe" % c["name"]
            # A wedged probed is restarted before its silence takes the server along.
            assert probe_window(own) + own.get("terminationGracePeriodSeconds", pod.grace) \
                < probe_window(live), c["name"]
            if pod.config.get("restart-pod-on"):  # probed's in-place restart comes first
                assert restart_after < probe_window(live) - live.get("periodSeconds", 10), \
                    "%s: liveness window %ds, --restart-pod-after %gs" % (
                        c["name"], probe_window(live), restart_after)
        if start is not None:
            assert probe_budget(start) >= MIN_STARTUP_BUDGET, "%s: startup budget %ds" % (
                c["name"], probe_budget(start))
            startup_timeout = pod.config.get("startup-timeout")
            assert startup_timeout is None or parse_duration(startup_timeout) <= probe_budget(
                start), "--startup-timeout beyond the kubelet's startup budget"
        if ready is not None:
            assert ready.get("periodSeconds", 10) <= MAX_READINESS_PERIOD


# ---------------------------------------------------------------- drains, tokens, restarts

@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_prestop_drain_and_the_servers_own_shutdown_fit_the_grace_period(
        where: str, tpl: Dict[str, Any]) -> None:
    pod = PodModel(tpl, where)
    for c in pod.servers:
        drain = parse_prestop(c)
        if drain is None:
            assert not pod.serves_requests, "%s serves requests: it needs a preStop drain" % (
                c["name"])
            continue
        assert drain.client_timeout > drain.wait, "%s: the client gives up before the wait" % (
            c["name"])
        if drain.host in LOOPBACK_HOSTS:  # this pod's own admin listener
            assert pod.admin and port_of(pod.admin) == drain.port, c["name"]
        # One budget: the preStop wait, then the server's own drain after SIGTERM (vLLM
        # --shutdown-timeout), then probed's --drain-seconds (a native sidecar stops last).
        shutdown = server_shutdown_seconds(c)
        assert drain.wait + shutdown + pod.drain_seconds < pod.grace, \
            "%s: wait %gs + shutdown %ds + --drain-seconds %gs >= grace %ds" % (
                c["name"], drain.wait, shutdown, pod.drain_seconds, pod.grace)


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_no_admin_listener_beyond_loopback_without_a_token_from_a_secret(
        where: str, tpl: Dict[str, Any]) -> None:
    """The admin listener changes state (drain, readiness, heartbeats): on loopback only the
    pod's own containers reach it; anywhere else every call needs the token."""
    pod = PodModel(tpl, where)
    if pod.admin_beyond_loopback:
        assert pod.admin_token, "--admin-addr %s without --admin-token-file" % pod.admin
    if pod.admin_token:
        assert secret_of_file(pod.spec, pod.probed, pod.admin_token), \
            "--admin-token-file %s is not mounted from a Secret" % pod.admin_token
    for c in pod.servers:  # a drain of a listener that needs the token sends it
        drain = parse_prestop(c)
        if drain is None:
            continue
        remote = drain.host not in LOOPBACK_HOSTS
        if remote or pod.admin_token:
            assert drain.token_file, "%s: the preStop drain sends no admin token" % c["name"]
            secret = secret_of_file(pod.spec, c, drain.token_file)
            assert secret, "%s: %s is not mounted from a Secret" % (c["name"], drain.token_file)
            if not remote:
                assert secret == secret_of_file(pod.spec, pod.probed, pod.admin_token)
    beat_token = pod.config.get("beat-token-file")
    if pod.config.get("beat-to"):
        assert beat_token and secret_of_file(pod.spec, pod.probed, beat_token), \
            "--beat-to needs --beat-token-file from a Secret (the leader's listener has a token)"


def admin_secrets(doc: Dict[str, Any]) -> Dict[str, str]:
    """{role: Secret of the admin token} of the templates whose admin listener others call."""
    out = {}
    for role, tpl in pod_templates(doc):
        pod = PodModel(tpl, "")
        if pod.admin_beyond_loopback:
            out[role] = secret_of_file(pod.spec, pod.probed, pod.admin_token or "") or ""
    return out


MULTI_POD = [(w, d) for w, d in all_docs() if len(pod_templates(d)) > 1]


@pytest.mark.parametrize("where,doc", MULTI_POD, ids=doc_ids(MULTI_POD))
def test_calls_to_another_pods_admin_listener_carry_that_listeners_token(
        where: str, doc: Dict[str, Any]) -> None:
    """Worker pods drain their leader and beat to it: with the token the leader checks."""
    listeners = admin_secrets(doc)
    for role, tpl in pod_templates(doc):
        pod = PodModel(tpl, where)
        remote = [(c, d) for c in pod.servers for d in [parse_prestop(c)]
                  if d is not None and d.host not in LOOPBACK_HOSTS]
        beats = pod.config.get("beat-to")
        if not remote and not beats:
            continue
        assert len(listeners) == 1, "%s: which pod's admin listener is called?" % role
        (target_role, secret), = listeners.items()
        assert target_role != role
        for c, drain in remote:
            assert secret_of_file(pod.spec, c, drain.token_file or "") == secret, c["name"]
        if beats:
            assert secret_of_file(pod.spec, pod.probed,
                                  pod.config.get("beat-token-file") or "") == secret


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_in_place_restart_rule_matches_probeds_exit_code(where: str,
                                                         tpl: Dict[str, Any]) -> None:
    """--restart-pod-on live=CODE and restartPolicyRules [RestartAllContainers on CODE] go
    together, on probed's own container: the rule sits on the container that exits."""
    pod = PodModel(tpl, where)
    codes = set(exit_rules(pod.config.get("restart-pod-on")).values())
    rules = pod.probed.get("restartPolicyRules", [])
    ruled = set()
    for rule in rules:
        assert rule["action"] == RESTART_ALL and rule["exitCodes"]["operator"] == "In", rule
        ruled |= set(rule["exitCodes"]["values"])
    assert ruled == codes, "--restart-pod-on exits with %s, restartPolicyRules match %s" % (
        sorted(codes), sorted(ruled))
    others = [c["name"] for c in containers(pod.spec) if c is not pod.probed and
              c.get("restartPolicyRules")]
    assert not others, "restart rules on %s: probed is the container that exits" % others
    if codes:
        assert pod.probed.get("restartPolicy") == "Always"  # a sidecar's rules need 1.35+
        assert MIN_KUBERNETES.get(pod.recipe) == RESTART_RULES_KUBERNETES


def test_restart_rules_are_unknown_to_kubernetes_1_33() -> None:
    """The recipe's oldest version is real: 1.33's schema has no restartPolicyRules, so strict
    validation (kubectl's default) refuses the manifest there."""
    kv = pytest.importorskip("kubernetes_validate")
    ruled = [(w, tpl) for w, tpl in TEMPLATES if the_probed(tpl["spec"]).get(
        "restartPolicyRules")]
    assert ruled, "no recipe uses restartPolicyRules"
    for where, tpl in ruled:
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                   "template": tpl}
        with pytest.raises(kv.ValidationError, match="restartPolicyRules"):
            kv.validate(wrapped, "1.33", strict=True)


LWS_DOCS = [(w, d) for w, d in all_docs() if d["kind"] == "LeaderWorkerSet"]


@pytest.mark.parametrize("where,doc", LWS_DOCS, ids=doc_ids(LWS_DOCS))
def test_multinode_heartbeats_reach_the_leader_and_count_every_rank(
        where: str, doc: Dict[str, Any]) -> None:
    """Without Ray: each worker rank beats to the leader's admin listener, and the leader's
    ready needs size - 1 ranks; a leader that expects ranks nobody sends is never ready."""
    lwt = doc["spec"]["leaderWorkerTemplate"]
    leader = PodModel(lwt["leaderTemplate"], where)
    worker = PodModel(lwt["workerTemplate"], where)
    ranks = [c for c in leader.config["checks"] if c["name"] == "ranks"]
    beat_to = worker.config.get("beat-to")
    assert bool(ranks) == bool(beat_to), "--worker-ranks on the leader, --beat-to on workers"
    if not ranks:
        return
    assert int(ranks[0]["expect"]) == lwt["size"] - 1, "--worker-ranks is the LWS size - 1"
    target = urlsplit(beat_to)
    assert target.hostname == SAMPLE_ENV["LWS_LEADER_ADDRESS"].lower(), \
        "workers beat to $(LWS_LEADER_ADDRESS)"
    assert leader.admin_beyond_loopback and target.port == port_of(leader.admin)
    # A rank counts as lost after the window; it should hold three beats.
    window = parse_duration(ranks[0]["window"])
    assert window >= 3 * parse_duration(worker.config["beat-every"])
    assert worker.config["beat-on"] == "ready", "a worker beats only while it is ready"


def exec_scripts(tpl: Dict[str, Any]) -> List[Tuple[Dict[str, Any], List[str], str]]:
    """(exec check, its argv, the script's text) for probed exec checks whose script comes
    from a ConfigMap in the same manifest."""
    spec, probed = tpl["spec"], the_probed(tpl["spec"])
    maps = {d["metadata"]["name"]: d.get("data", {}) for w, d in all_docs()
            if d["kind"] == "ConfigMap"}
    out = []
    for check in print_config(tuple(probed_argv(probed)))["checks"]:
        if check["kind"] != "exec":
            continue
        argv = shlex.split(check["cmd"])
        for word in argv:
            source = configmap_file(spec, probed, word)
            if source and source[0] in maps:
                out.append((check, argv, maps[source[0]][source[1]]))
    return out


SCRIPTED = [(w, tpl) for w, tpl in TEMPLATES if exec_scripts(tpl)]


@pytest.mark.parametrize("where,tpl", SCRIPTED, ids=doc_ids(SCRIPTED))
def test_exec_checks_reading_proc_share_the_process_namespace(where: str,
                                                              tpl: Dict[str, Any]) -> None:
    for check, _, script in exec_scripts(tpl):
        if "/proc" in script:  # another container's processes are visible only this way
            assert tpl["spec"].get("shareProcessNamespace") is True, check["name"]


def vllm_worker(title: str) -> "subprocess.Popen[bytes]":
    """A process whose command line starts as a vLLM worker's does after setproctitle."""
    return subprocess.Popen(["bash", "-c", 'exec -a "%s" sleep 60' % title])


@pytest.mark.parametrize("where,tpl", SCRIPTED, ids=doc_ids(SCRIPTED))
def test_worker_process_check_counts_real_processes(where: str, tpl: Dict[str, Any],
                                                    tmp_path: Path) -> None:
    """The recipe's own script, run on real processes titled as vLLM titles its workers
    (VLLM::Worker_PP1_TP0...): it passes with enough of them and fails when one is gone."""
    for check, argv, script in exec_scripts(tpl):
        path = tmp_path / "check.py"
        path.write_text(script, encoding="utf-8")
        need = int(argv[-1])

        def run(n: int) -> "subprocess.CompletedProcess[str]":
            return subprocess.run([sys.executable, "-I", "-S", str(path), str(n)],
                                  stdout=subprocess.PIPE, universal_newlines=True,
                                  timeout=RUN_TIMEOUT)

        already = int(run(0).stdout.split()[0])  # this machine's own, if any
        workers = [vllm_worker("VLLM::Worker_PP1_TP%d" % i) for i in range(need)]
        others = [vllm_worker("VLLM::EngineCore"), vllm_worker("vllm serve --headless")]
        try:
            for proc in workers + others:
                wait_title(proc.pid)
            assert run(already + need).returncode == 0, check["name"]
            workers[0].kill()
            workers[0].wait(timeout=10)
            failed = run(already + need)
            assert failed.returncode == 1 and "%d vLLM worker" % (already + need - 1) in \
                failed.stdout, failed.stdout
        finally:
            for proc in workers + others:
                proc.kill()
                proc.wait(timeout=10)


def wait_title(pid: int) -> None:
    """Until bash has exec'd into the titled process."""
    for _ in range(500):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                if not fh.read().startswith(b"bash"):
                    return
        except OSError:
            return
        time.sleep(0.01)
    raise AssertionError("process %d never took its title" % pid)


@pytest.mark.parametrize("where,tpl,c", DRAINS, ids=[w for w, _, _ in DRAINS])
def test_prestop_command_drains_a_real_probed(where: str, tpl: Dict[str, Any],
                                              c: Dict[str, Any], start_daemon: Any,
                                              tmp_path: Path) -> None:
    """The preStop words themselves, run against probed.py (the file the ConfigMap ships) on a
    free loopback port: the hook reaches the drain, with the token where one is needed."""
    pod = PodModel(tpl, where)
    drain = parse_prestop(c)
    assert drain is not None
    words = list(c["lifecycle"]["preStop"]["exec"]["command"])
    program = shlex.split(words[-1])[1] if words[0].endswith("sh") else words[0]
    if program in ("curl", "wget") and shutil.which(program) is None:
        pytest.skip("%s is not installed here" % program)
    token = tmp_path / "token"
    token.write_text("s3cret-admin-token\n", encoding="utf-8")
    needs_token = drain.host not in LOOPBACK_HOSTS or bool(pod.admin_token)
    admin_port = free_port()
    args = ["--admin-addr", "127.0.0.1:%d" % admin_port]
    daemon = start_daemon(args + (["--admin-token-file", str(token)] if needs_token else []),
                          script=str(REPO / "probed.py"))
    wait_listening("127.0.0.1", admin_port)
    local = []
    for word in words:
        word = word.replace(PROBED_PY_MOUNT, str(REPO / "probed.py"))
        if drain.token_file:
            word = word.replace(drain.token_file, str(token))
        # The admin URL (this pod's loopback or the leader's name) -> the test's listener.
        local.append(re.sub(r"//[^/\s'\":]+:%d\b" % drain.port, "//127.0.0.1:%d" % admin_port,
                            word))
    env = dict(os.environ, LWS_LEADER_ADDRESS="127.0.0.1")
    res = subprocess.run(local, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                         universal_newlines=True, timeout=RUN_TIMEOUT)
    assert res.returncode == 0 and "drained" in res.stdout, (res.stdout, res.stderr,
                                                             daemon.port)


# ---------------------------------------------------------------- flags, scripts, hygiene

@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_probed_flags_exist_and_print_config_accepts_them(where: str,
                                                          tpl: Dict[str, Any]) -> None:
    argv = probed_argv(the_probed(tpl["spec"]))
    assert argv and argv[0] not in SUBCOMMANDS
    used = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    assert used <= help_flags(), "not in `probed --help`: %s" % sorted(used - help_flags())
    # probed refuses an empty check set unless told so: every container has checks or says it.
    assert print_config(tuple(argv))["checks"] or "--allow-no-checks" in argv


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_scripts_name_probed_checks_that_exist(where: str, tpl: Dict[str, Any]) -> None:
    """A server script that waits on `http://127.0.0.1:PORT/readyz/CHECK` names a real check
    on probed's real port (a typo would leave the server waiting for ever)."""
    pod = PodModel(tpl, where)
    for c in pod.servers:
        text = "\n".join(c.get("command", []) + c.get("args", []))
        for port, _group, check in _CHECK_URL.findall(text):
            assert int(port) == pod.port and check in pod.check_names, (c["name"], check)


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_vllm_keeps_probeds_polls_out_of_its_access_log(where: str, tpl: Dict[str, Any]) -> None:
    for c in containers(tpl["spec"]):
        text = " ".join(c.get("command", []) + c.get("args", []))
        if not re.search(r"\bvllm\s+serve\b", text) or "--headless" in text:
            continue  # a headless worker serves no HTTP
        found = re.search(r"--disable-access-log-for-endpoints[= ]([^\s\\]+)", text)
        assert found, "%s: --disable-access-log-for-endpoints (vLLM 0.32 has it)" % c["name"]
        assert {"/health", "/metrics"} <= set(found.group(1).split(","))


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_non_root_and_small_probed(where: str, tpl: Dict[str, Any]) -> None:
    spec = tpl["spec"]
    pod_ctx = spec.get("securityContext", {})
    for c in containers(spec):
        ctx = c.get("securityContext", {})
        assert ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")) is True, c["name"]
        assert ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) != 0, c["name"]
        assert ctx.get("allowPrivilegeEscalation") is False, c["name"]
        assert "ALL" in ctx.get("capabilities", {}).get("drop", []), c["name"]
        assert c.get("image"), c["name"]
    probed = the_probed(spec)
    assert probed["securityContext"].get("readOnlyRootFilesystem") is True
    requests, limits = probed["resources"]["requests"], probed["resources"]["limits"]
    assert cpu_milli(requests["cpu"]) <= MAX_PROBED_CPU_MILLI
    assert 2 * PROBED_IDLE_RSS_MI <= memory_mi(requests["memory"]) <= memory_mi(
        limits["memory"]) <= MAX_PROBED_MEMORY_MI
    assert "cpu" not in limits, "a CPU limit would throttle probe answers"


# ---------------------------------------------------------------- the recipes' probed, running

GRPC_PROBES = [("%s %s %s" % (w, c["name"], kind), tpl, c[kind]["grpc"]["service"])
               for w, tpl in TEMPLATES for c in tpl["spec"]["containers"]
               for kind in PROBE_KINDS if "grpc" in c.get(kind, {})]


def local_argv(argv: List[str], mapping: Dict[str, str]) -> List[str]:
    """A probed container's arguments for a run on loopback: --addr dropped (the test picks
    the port), cluster names, ports and mounted paths swapped for local ones."""
    out = []
    for word in argv:
        if word.startswith("--addr="):
            continue
        for old, new in mapping.items():
            word = word.replace(old, new)
        out.append(word)
    return out


@pytest.mark.parametrize("where,tpl,service", GRPC_PROBES, ids=[w for w, _, _ in GRPC_PROBES])
def test_grpc_probe_services_are_known_to_the_recipes_probed(where: str, tpl: Dict[str, Any],
                                                             service: str,
                                                             start_daemon: Any) -> None:
    """The kubelet's grpc probe with the recipe's service name, against probed.py started with
    the recipe's arguments: a known service (SERVING or NOT_SERVING), never NOT_FOUND."""
    grpc = pytest.importorskip("grpc", reason="grpcio is a test dependency (tests/run.sh)")
    health = pytest.importorskip("grpc_health.v1.health_pb2")
    stub_mod = pytest.importorskip("grpc_health.v1.health_pb2_grpc")
    daemon = start_daemon(local_argv(PodModel(tpl, where).argv, {}),
                          script=str(REPO / "probed.py"))
    with grpc.insecure_channel("127.0.0.1:%d" % daemon.port) as channel:
        reply = stub_mod.HealthStub(channel).Check(
            health.HealthCheckRequest(service=service), timeout=5)
    assert reply.status in (health.HealthCheckResponse.SERVING,
                            health.HealthCheckResponse.NOT_SERVING), reply


def http_status(port: int, path: str) -> Tuple[int, str]:
    """GET http://127.0.0.1:PORT/PATH once: (status, body)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=2) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def wait_status(port: int, path: str, status: int, deadline: float) -> float:
    """Seconds until PATH answers STATUS (polled every 0.2 s), or fail after DEADLINE s."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline:
        if http_status(port, path)[0] == status:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError("%s did not answer %d within %gs: %r" % (
        path, status, deadline, http_status(port, path)))


HEADLESS = [(w, d) for w, d in LWS_DOCS if any(
    c["name"] == "ranks" for c in PodModel(
        d["spec"]["leaderWorkerTemplate"]["leaderTemplate"], w).config["checks"])]


@pytest.mark.slow
@pytest.mark.parametrize("where,doc", HEADLESS, ids=doc_ids(HEADLESS))
def test_headless_group_leaves_ready_when_a_rank_loses_its_workers(
        where: str, doc: Dict[str, Any], start_daemon: Any, tmp_path: Path) -> None:
    """Recipe (i) on loopback with its own arguments: the worker's probed counts real processes
    titled as vLLM's workers and checks the leader's store port, beats with the token to the
    leader's admin listener, and the leader's `ranks` passes; when one worker process dies the
    worker's live fails (the kubelet would restart it and LWS recreate the group) and the
    leader's ready loses the rank within the README's arithmetic (10 + 15 + 2 s)."""
    lwt = doc["spec"]["leaderWorkerTemplate"]
    leader = PodModel(lwt["leaderTemplate"], where)
    worker = PodModel(lwt["workerTemplate"], where)
    (check, argv, script), = exec_scripts(lwt["workerTemplate"])
    script_path = tmp_path / "vllm_workers.py"
    script_path.write_text(script, encoding="utf-8")
    token = tmp_path / "token"
    token.write_text("s3cret-admin-token\n", encoding="utf-8")
    store = socket.socket()  # stands for rank 0's torch.distributed store on the leader
    store.bind(("127.0.0.1", 0))
    store.listen(8)
    admin_port, need = free_port(), int(argv[-1])
    already = int(subprocess.run([sys.executable, "-I", "-S", str(script_path), "0"],
                                 stdout=subprocess.PIPE, universal_newlines=True,
                                 timeout=RUN_TIMEOUT).stdout.split()[0])
    leader_host = SAMPLE_ENV["LWS_LEADER_ADDRESS"]
    mapping = {leader.admin or "": "127.0.0.1:%d" % admin_port,
               "%s:%d" % (leader_host, port_of(leader.admin or "")): "127.0.0.1:%d" % admin_port,
               "%s:29501" % leader_host: "127.0.0.1:%d" % store.getsockname()[1],
               leader.admin_token or "": str(token),
               worker.config["beat-token-file"]: str(token),
               " ".join(argv[-2:]): "%s %d" % (script_path, already + need)}
    workers = [vllm_worker("VLLM::Worker_PP1_TP%d" % i) for i in range(need)]
    try:
        for proc in workers:
            wait_title(proc.pid)
        lead = start_daemon(local_argv(leader.argv, mapping), script=str(REPO / "probed.py"))
        wait_listening("127.0.0.1", admin_port)
        rank = start_daemon(local_argv(worker.argv, mapping), script=str(REPO / "probed.py"),
                            env={"LWS_WORKER_INDEX": "1"})
        wait_status(lead.port, "/readyz/ranks", 200, 30)
        assert http_status(rank.port, "/readyz")[0] == 200, "a worker beats while ready"
        workers[0].kill()
        workers[0].wait(timeout=10)
        lost = wait_status(lead.port, "/readyz/ranks", 503, 10 + 15 + 2 + 15)
        print("rank lost on the leader %.1f s after a worker process died" % lost)
        assert http_status(rank.port, "/livez")[0] == 503, "the worker's live fails too"
        assert "rank-1" in http_status(lead.port, "/readyz/ranks?verbose")[1]
    finally:
        store.close()
        for proc in workers:
            proc.kill()
            proc.wait(timeout=10)
