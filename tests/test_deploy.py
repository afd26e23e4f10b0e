"""deploy/ recipes: schema validation, DESIGN §3 "Where the probes go", and probed's real flags.

Every Kubernetes object in deploy/*/*.yaml is validated against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields, wrong types and missing required fields fail) for
the oldest version the recipes support (1.29: native sidecars on by default) and the newest the
package knows. Custom resources (LeaderWorkerSet, RayCluster, ServiceExport, HTTPRoute) have no
schema there: their pod templates are validated against the core PodTemplateSpec schema and
their own fields are checked by hand. Then each pod template is held to the recipes' rules:
probes on the server containers at probed's port, none reflecting the backend on probed's own
container, a startup budget of at least 10 minutes, a preStop drain shorter than the grace
period, and only flags `python3 -m probed --help` lists, with `--print-config` accepting each
probed container's arguments. Nothing here contacts a cluster or runs an image.
"""

import functools
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML comes with kubernetes-validate (tests/run.sh)")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from probed.values import parse_duration  # noqa: E402  (after making the repo importable)

DEPLOY = REPO / "deploy"
RECIPES = ("vllm-sidecar", "vllm-configmap", "tgi-multicluster", "worker-pool",
           "llmd-requester", "lws-multinode", "kuberay")
OLDEST_KUBERNETES = "1.29"  # restartable init containers (native sidecars) on by default
RUN_TIMEOUT = 60.0
MIN_STARTUP_BUDGET = 600  # seconds: a model download and load must never be cut short
MAX_READINESS_PERIOD = 5  # seconds: readiness changes (shedding, draining) reach the kubelet fast
MAX_PROBED_CPU_MILLI = 50
MAX_PROBED_MEMORY_MI = 128
GROUP_PATHS = {
    "startupProbe": ("/startupz",),
    "livenessProbe": ("/livez", "/healthz"),
    "readinessProbe": ("/readyz", "/ready", "/health"),
}
PROBE_KINDS = tuple(GROUP_PATHS)
SUBCOMMANDS = ("drain", "beat", "check")
# Values for $(VAR) references the environment of a real pod provides (LWS sets this one).
SAMPLE_ENV = {"LWS_GROUP_SIZE": "2"}
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost", "")
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
_FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
_CHECK_URL = re.compile(r"https?://127\.0\.0\.1:(\d+)/(livez|readyz|startupz)/([\w.-]+)")


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


class PodModel:
    """One pod template, its probed sidecar and probed's effective configuration."""

    def __init__(self, tpl: Dict[str, Any]) -> None:
        self.spec = tpl["spec"]
        self.probed = the_probed(self.spec)
        self.config = print_config(tuple(probed_argv(self.probed)))
        self.port = port_of(self.config["addr"])
        self.admin = self.config.get("admin-addr")
        self.drain_seconds = parse_duration(self.config["drain-seconds"])
        self.grace = self.spec.get("terminationGracePeriodSeconds", 30)
        self.servers = [c for c in self.spec["containers"] if c["name"] != "probed"]
        self.check_names = {c["name"] for c in self.config["checks"]}
        self.serves_requests = any(c["kind"] == "inflight" for c in self.config["checks"])


TEMPLATES = all_templates()


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


def schema_versions() -> List[str]:
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate "
                             "(tests/run.sh installs it)")
    return [OLDEST_KUBERNETES, kv.latest_version()]


def validate_strict(doc: Dict[str, Any], where: str) -> None:
    versions = schema_versions()  # skips the test without kubernetes-validate
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
def test_probed_container_is_a_sidecar_without_backend_probes(where: str,
                                                               tpl: Dict[str, Any]) -> None:
    pod = PodModel(tpl)
    c = pod.probed
    assert c in pod.spec.get("initContainers", []) and c.get("restartPolicy") == "Always", \
        "probed runs as a native sidecar (initContainers, restartPolicy: Always)"
    # A readiness or startup probe here would reflect the backend on the wrong container, and
    # a startup probe on a sidecar would even hold the server back until it passed.
    assert "readinessProbe" not in c and "startupProbe" not in c
    live = c.get("livenessProbe")
    if live is not None:  # probed itself: answers whenever its event loop runs
        assert live["httpGet"]["path"] == "/metrics" and live["httpGet"]["port"] == pod.port
        assert live.get("timeoutSeconds", 1) == 1
    assert any(p["containerPort"] == pod.port for p in c.get("ports", [])), \
        "probed's probe port %d is declared on its container" % pod.port


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_server_probes_target_probeds_port(where: str, tpl: Dict[str, Any]) -> None:
    pod = PodModel(tpl)
    ready = 0
    for c in pod.servers:
        for kind in PROBE_KINDS:
            probe = c.get(kind)
            if probe is None:
                continue
            assert "httpGet" in probe, "%s %s: an httpGet probe of probed" % (c["name"], kind)
            get = probe["httpGet"]
            # Numeric: a named port would be looked up on this container, not on probed's.
            assert get["port"] == pod.port, "%s %s: port %r, probed listens on %d" % (
                c["name"], kind, get["port"], pod.port)
            route = urlsplit(get["path"]).path
            assert route in GROUP_PATHS[kind], "%s %s: path %s" % (c["name"], kind, route)
            assert probe.get("timeoutSeconds", 1) == 1, "probed answers in microseconds"
        ready += "readinessProbe" in c
    assert ready, "no server container carries a readiness probe"


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_probe_timings(where: str, tpl: Dict[str, Any]) -> None:
    pod = PodModel(tpl)
    own = pod.probed.get("livenessProbe")
    for c in pod.servers:
        live, start, ready = (c.get(k) for k in ("livenessProbe", "startupProbe",
                                                  "readinessProbe"))
        if live is not None:
            assert start is not None, "%s: liveness without a startup probe" % c["name"]
            if own is not None:  # a wedged probed is restarted before it takes the server along
                assert probe_window(own) + own.get("terminationGracePeriodSeconds", pod.grace) \
                    < probe_window(live), c["name"]
        if start is not None:
            assert probe_budget(start) >= MIN_STARTUP_BUDGET, "%s: startup budget %ds" % (
                c["name"], probe_budget(start))
            startup_timeout = pod.config.get("startup-timeout")
            assert startup_timeout is None or parse_duration(startup_timeout) <= probe_budget(
                start), "--startup-timeout beyond the kubelet's startup budget"
        if ready is not None:
            assert ready.get("periodSeconds", 10) <= MAX_READINESS_PERIOD


def prestop_wait(c: Dict[str, Any], pod: PodModel) -> Optional[float]:
    """Seconds the server container's preStop may take, checked against probed's admin
    listener; None without a preStop."""
    hook = c.get("lifecycle", {}).get("preStop")
    if hook is None:
        return None
    if "httpGet" in hook:
        get = hook["httpGet"]
        url = urlsplit(get["path"])
        assert url.path == "/wait-for-drain" and pod.admin, "preStop httpGet: probed's drain"
        assert get["port"] == port_of(pod.admin)
        # The kubelet sends lifecycle httpGet to the pod IP, never to loopback.
        assert host_of(pod.admin) not in LOOPBACK_HOSTS, \
            "--admin-addr %s is loopback: the kubelet's preStop httpGet cannot reach it" % pod.admin
        return parse_duration(parse_qs(url.query)["timeout"][0])
    words = hook["exec"]["command"]
    for argv in probed_invocations(words):
        assert argv and argv[0] == "drain", "preStop runs `probed drain`"
        used = {a.split("=", 1)[0] for a in argv[1:] if a.startswith("--")}
        assert used <= help_flags("drain"), used - help_flags("drain")
        opts = dict(a.split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
        admin = urlsplit(opts.get("--admin", "http://127.0.0.1:9090"))
        if admin.hostname in LOOPBACK_HOSTS:  # this pod's own admin listener
            assert pod.admin and port_of(pod.admin) == admin.port
        return parse_duration(opts.get("--wait", "60s"))
    for tokens in shell_commands(words):  # e.g. wget of a leader's /wait-for-drain
        for t in tokens:
            if "/wait-for-drain?" in t:
                return parse_duration(parse_qs(urlsplit(t).query)["timeout"][0])
    pytest.fail("%s: preStop is not a probed drain: %r" % (c["name"], words))


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_prestop_drain_fits_the_grace_period(where: str, tpl: Dict[str, Any]) -> None:
    pod = PodModel(tpl)
    for c in pod.servers:
        wait = prestop_wait(c, pod)
        if wait is None:
            assert not pod.serves_requests, "%s serves requests: it needs a preStop drain" % (
                c["name"])
            continue
        assert wait + pod.drain_seconds < pod.grace, \
            "%s: preStop wait %gs + --drain-seconds %gs >= terminationGracePeriodSeconds %d" % (
                c["name"], wait, pod.drain_seconds, pod.grace)


# ---------------------------------------------------------------- flags, scripts, hygiene

@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_probed_flags_exist_and_print_config_accepts_them(where: str,
                                                          tpl: Dict[str, Any]) -> None:
    argv = probed_argv(the_probed(tpl["spec"]))
    assert argv and argv[0] not in SUBCOMMANDS
    used = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    assert used <= help_flags(), "not in `probed --help`: %s" % sorted(used - help_flags())
    assert print_config(tuple(argv))["checks"], "probed would run without a check"


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_scripts_name_probed_checks_that_exist(where: str, tpl: Dict[str, Any]) -> None:
    """A server script that waits on `http://127.0.0.1:PORT/readyz/CHECK` names a real check
    on probed's real port (a typo would leave the server waiting for ever)."""
    pod = PodModel(tpl)
    for c in pod.servers:
        text = "\n".join(c.get("command", []) + c.get("args", []))
        for port, _group, check in _CHECK_URL.findall(text):
            assert int(port) == pod.port and check in pod.check_names, (c["name"], check)


@pytest.mark.parametrize("where,tpl", TEMPLATES, ids=doc_ids(TEMPLATES))
def test_vllm_keeps_probeds_polls_out_of_its_access_log(where: str, tpl: Dict[str, Any]) -> None:
    for c in containers(tpl["spec"]):
        text = " ".join(c.get("command", []) + c.get("args", []))
        if not re.search(r"\bvllm\s+serve\b", text):
            continue
        found = re.search(r"--disable-access-log-for-endpoints[= ]([^\s\\]+)", text)
        assert found, "%s: vLLM >= 0.16 --disable-access-log-for-endpoints" % c["name"]
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
    assert memory_mi(requests["memory"]) <= memory_mi(limits["memory"]) <= MAX_PROBED_MEMORY_MI
    assert "cpu" not in limits, "a CPU limit would throttle probe answers"
