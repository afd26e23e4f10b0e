"""The single file probed.py as users run it: `python3 -I -S probed.py ...` on CPython 3.8-3.13.

Each test runs a fresh bundle of probed/ (equal to the committed probed.py, which
tests/test_bundle.py enforces) from a temporary directory with every interpreter in PYTHONS,
isolated (-I: no script dir or user site on sys.path, no PYTHON* env) and without site (-S), so
nothing but the standard library can be imported. An interpreter that is absent is skipped.
`SingleFileDaemon` starts the file as a daemon on a loopback port and probes it kubelet-style
(a new connection per probe); the smoke test of the daemon on each Python builds on it.
"""

import ast
import glob
import http.client
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import IO, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from probed import bundle  # noqa: E402  (after making the repo importable under plain `pytest`)

PYTHONS = ("3.8", "3.9", "3.10", "3.11", "3.12", "3.13")
RUN_TIMEOUT = 60.0  # seconds for one interpreter run (pyenv shims and cold caches are slow)
START_TIMEOUT = 20.0  # seconds for a daemon to start accepting connections
PROBE_TIMEOUT = 5.0  # seconds for one probe, like a kubelet probe's timeoutSeconds
# Never loaded unless an https URL is configured: _ssl is OpenSSL, ~4 MB of RSS. Not `ssl`: its
# name is logged by -X importtime even when the import fails (blocked by sys.modules["ssl"] =
# None), while _ssl is imported only when ssl really loads. Not subprocess: `import asyncio`
# loads it on every Python (as it loads ssl, unless ssl is blocked before asyncio is imported).
LAZY_ONLY_MODULES = ("_ssl",)
# Never loaded by a run that uses no GPU: ctypes is for NVML only (the gpu check, --gpu).
GPU_ONLY_MODULES = ("ctypes", "_ctypes")
# Check kinds a --vllm run does not use (gpu, exec, ray, relay, tcp) and the code only they
# import: a kind's module loads when a check of that kind is built (issue 18, idle RSS). --help
# loads them all: it lists every kind's keys.
UNUSED_KIND_MODULES = ("probed.checks.gpu", "probed.gpureader", "probed.nvml", "probed.gpufaults",
                       "probed.checks.exec", "probed.checks.ray", "probed.checks.relay",
                       "probed.checks.tcp")
# Without --admin-addr, --beat-to and the kinds that need the admin listener (manual, heartbeat).
ADMIN_ONLY_MODULES = ("probed.admin", "probed.drain", "probed.pushbeat", "probed.checks.manual",
                      "probed.checks.heartbeat")
# Built when first needed, never by a daemon that has not seen one (issue 18, idle RSS): the
# HTTP/2 and gRPC stack at the first connection sending the HTTP/2 preface, and the subcommands'
# modules when that subcommand runs.
GRPC_ONLY_MODULES = ("probed.hpack", "probed.h2proto", "probed.h2output", "probed.grpchealth",
                     "probed.h2server")
SUBCOMMAND_ONLY_MODULES = ("probed.checkcmd", "probed.probebench", "probed.beat")
# The daemon parses its flags by hand (flags.parse_serve_args): argparse builds --help only.
HELP_ONLY_MODULES = ("argparse", "gettext", "probed.flaghelp")


def _version_of(executable: str) -> Optional[str]:
    """The "3.X" an interpreter reports, or None when it does not run (a dangling pyenv shim)."""
    try:
        done = subprocess.run(
            [executable, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=RUN_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.decode().strip() if done.returncode == 0 else None


@lru_cache(maxsize=None)
def find_python(version: str) -> Optional[str]:
    """A working `python3.X`: the one on PATH, else one pyenv installed; None when absent.

    A pyenv shim is on PATH for every installed version but runs only the versions selected by
    `pyenv global`/PYENV_VERSION, so fall back to pyenv's versions directory.
    """
    name = "python" + version
    candidates = [shutil.which(name) or ""]
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    installed = glob.glob(os.path.join(root, "versions", version + ".*", "bin", name))
    candidates += sorted(installed, key=_release_key, reverse=True)
    for candidate in candidates:
        if candidate and _version_of(candidate) == version:
            return candidate
    return None


def _release_key(path: str) -> Tuple[int, ...]:
    release = Path(path).parents[1].name  # .../versions/3.8.18/bin/python3.8
    return tuple(int(p) if p.isdigit() else -1 for p in release.split("."))


def python_or_skip(version: str) -> str:
    """The interpreter for `version`, or skip the test cleanly when it is not installed."""
    found = find_python(version)
    if found is None:
        pytest.skip("python%s is not installed (not on PATH, not in pyenv)" % version)
    return found


def run_single_file(python: str, script: Path, args: Sequence[str], cwd: Path,
                    flags: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Run `python -I -S [flags] script args` the way users do, from `cwd`; text output."""
    return subprocess.run(
        [python, "-I", "-S"] + list(flags) + [str(script)] + list(args),
        cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=RUN_TIMEOUT)


def free_loopback_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago on `host` (the daemon binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class SingleFileDaemon:
    """probed.py running as a daemon on a loopback port, probed the way the kubelet does.

    Use as a context manager: it starts `python -I -S [flags] script args` (args should include
    `--addr 127.0.0.1:PORT`), waits until `port` accepts connections, and on exit ends the one
    process it started: SIGTERM, then SIGKILL by PID if it does not exit in time. `output` then
    holds everything it wrote to stdout and stderr.
    """

    def __init__(self, python: str, script: Path, args: Sequence[str], cwd: Path,
                 port: int, host: str = "127.0.0.1", flags: Sequence[str] = ()) -> None:
        self.argv = [python, "-I", "-S"] + list(flags) + [str(script)] + list(args)
        self.cwd = cwd
        self.host = host
        self.port = port
        self.proc: Optional[subprocess.Popen] = None
        self.log: Optional[IO[str]] = None  # the daemon's stdout and stderr, in cwd
        self.output = ""  # what it wrote, filled in by stop()

    def __enter__(self) -> "SingleFileDaemon":
        self.log = open(str(self.cwd / ("daemon-%d.log" % self.port)), "w+")
        self.proc = subprocess.Popen(self.argv, cwd=str(self.cwd), stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_until_accepting(START_TIMEOUT)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_until_accepting(self, timeout: float) -> None:
        """Poll with bare TCP connects until the port accepts; fail with the daemon's output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail("daemon exited with %s before accepting:\n%s" % (
                    self.proc.returncode, self.output))
            if self.tcp_probe():
                return
            time.sleep(0.05)
        self.stop()
        pytest.fail("daemon did not accept on %s:%d within %ss:\n%s" % (
            self.host, self.port, timeout, self.output))

    def tcp_probe(self) -> bool:
        """A kubelet tcpSocket probe: connect, then close without sending anything."""
        try:
            with socket.create_connection((self.host, self.port), timeout=PROBE_TIMEOUT):
                return True
        except OSError:
            return False

    def http_probe(self, path: str, method: str = "GET") -> Tuple[int, Dict[str, str], bytes]:
        """A kubelet httpGet probe on a new connection: (status, headers, body)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=PROBE_TIMEOUT)
        try:
            conn.request(method, path, headers={"User-Agent": "kube-probe/1.30",
                                                "Accept": "*/*", "Connection": "close"})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def stop(self, timeout: float = 10.0) -> int:
        """End the daemon (SIGTERM, then SIGKILL by PID); returns its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.log is not None and not self.log.closed:
            self.log.seek(0)
            self.output = self.log.read()
            self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="module")
def single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh bundle of probed/, alone in a directory outside the repository."""
    out = tmp_path_factory.mktemp("single") / "probed.py"
    bundle.write_bundle(REPO / "probed", out)
    return out


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with nothing in it: the file must not rely on its cwd."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


def package_version() -> str:
    """`__version__` of probed/__init__.py, read without importing anything from it."""
    tree = ast.parse((REPO / "probed" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__":
            return ast.literal_eval(node.value)
    raise AssertionError("probed/__init__.py sets no __version__")


def imports_at_module_level(path: Path) -> Set[str]:
    """Dotted names of the modules a file imports at module level (not inside functions)."""
    names: Set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def importtime_tree(stderr: str) -> List[Tuple[int, str]]:
    """(depth, module) per `-X importtime` line, in its order: children before their parent."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            field = line.rsplit("|", 1)[-1]
            name = field.strip()
            if name != "imported package":  # the column titles
                rows.append(((len(field) - len(field.lstrip()) - 1) // 2, name))
    return rows


def import_chain(rows: Sequence[Tuple[int, str]], module: str) -> str:
    """Who imported `module`: "asyncio > asyncio.base_events > ssl" (the first time)."""
    names = [name for _, name in rows]
    if module not in names:
        return module + " (already loaded at startup)"
    index = names.index(module)
    chain = [module]
    depth = rows[index][0]
    for later_depth, name in rows[index + 1:]:
        if later_depth < depth:
            chain.insert(0, name)
            depth = later_depth
    return " > ".join(chain)


def assert_not_loaded(rows: Sequence[Tuple[int, str]], modules: Sequence[str]) -> None:
    """Fail naming who imported any of `modules`, from `-X importtime` rows."""
    unwanted = sorted({name for _, name in rows} & set(modules))
    assert not unwanted, "loaded %s: %s" % (unwanted, "; ".join(
        import_chain(rows, name) for name in unwanted))


def loaded_modules(python: str, script: Path, args: Sequence[str],
                   cwd: Path) -> Tuple[Set[str], List[Tuple[int, str]]]:
    """Modules the file makes the interpreter load (or try to), and the `-X importtime` rows."""
    done = run_single_file(python, script, args, cwd, flags=["-X", "importtime"])
    assert done.returncode == 0, done.stderr
    startup = subprocess.run([python, "-I", "-S", "-c", "import sys; print(*sys.modules)"],
                             stdout=subprocess.PIPE, universal_newlines=True,
                             timeout=RUN_TIMEOUT).stdout.split()
    rows = importtime_tree(done.stderr)
    seen = {name for _, name in rows}
    # The parse must see what the file imports at module level, else its absence proves nothing.
    unseen = imports_at_module_level(script) - seen - set(startup)
    assert not unseen, "importtime parse missed %s" % sorted(unseen)
    return seen | set(startup), rows


@pytest.mark.parametrize("version", PYTHONS)
def test_help_and_version_run_isolated_from_any_directory(
        version: str, single_file: Path, elsewhere: Path) -> None:
    python = python_or_skip(version)
    done = run_single_file(python, single_file, ["--help"], elsewhere)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()
    assert "--version" in done.stdout
    done = run_single_file(python, single_file, ["--version"], elsewhere)
    assert done.returncode == 0, done.stderr
    assert package_version() in done.stdout + done.stderr


@pytest.mark.parametrize("version", PYTHONS)
def test_help_loads_no_ssl(version: str, single_file: Path, elsewhere: Path) -> None:
    python = python_or_skip(version)
    loaded, rows = loaded_modules(python, single_file, ["--help"], elsewhere)
    assert not loaded & set(LAZY_ONLY_MODULES)
    assert_not_loaded(rows, LAZY_ONLY_MODULES + GPU_ONLY_MODULES)


def test_imports_only_the_standard_library(single_file: Path, elsewhere: Path) -> None:
    if sys.version_info < (3, 10):
        pytest.skip("sys.stdlib_module_names needs Python 3.10+")
    stdlib = set(sys.stdlib_module_names)  # type: ignore[attr-defined]
    text = single_file.read_text(encoding="utf-8")
    sources = [text] + [source for _, _, source in bundle.embedded_sources(text)]
    assert len(sources) > 40, "found too few embedded modules: the scan is broken"
    imported: Set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add((node.module or "").split(".")[0])
    assert {"asyncio", "socket", "argparse"} <= imported, "the scan missed imports"
    assert imported - {"probed"} <= stdlib, sorted(imported - stdlib - {"probed"})
    loaded, _ = loaded_modules(sys.executable, single_file, ["--help"], elsewhere)
    roots = {name.split(".")[0] for name in loaded}
    # probed.*: the modules embedded in the file (-I and an empty cwd: there is no other probed)
    assert roots <= stdlib | {"__main__", "probed"}, sorted(roots - stdlib)


def test_single_file_is_under_the_size_budget(single_file: Path) -> None:
    size = single_file.stat().st_size
    assert size <= bundle.SIZE_BUDGET_BYTES, "probed.py is %d bytes, budget %d (why that budget: " \
        "SIZE_BUDGET_BYTES in probed/bundle.py)" % (size, bundle.SIZE_BUDGET_BYTES)


def test_the_budget_fits_a_configmap_with_room_for_a_config_file() -> None:
    configmap_data_limit = 1024 * 1024  # Kubernetes: a ConfigMap's data, keys and values
    assert bundle.SIZE_BUDGET_BYTES <= configmap_data_limit - 256 * 1024


def test_committed_single_file_is_under_the_size_budget() -> None:
    committed = REPO / "probed.py"
    assert committed.is_file(), "probed.py is missing: run `python3 -m probed.bundle`"
    assert committed.stat().st_size <= bundle.SIZE_BUDGET_BYTES


def test_comments_and_docstrings_are_kept(single_file: Path) -> None:
    text = single_file.read_text(encoding="utf-8")
    for path in ("pod.py", "httpproto.py", "scheduler.py"):
        source = (REPO / "probed" / path).read_text(encoding="utf-8")
        embedded = "".join("\n#" + line for line in source.split("\n")[:-1]) + "\n"
        assert embedded in text, "probed/%s is not in probed.py whole" % path
    assert "# " in source and '"""' in source  # the test would be vacuous without them


RAISE_FROM_A_KNOWN_FUNCTION = """
import runpy, sys
runpy.run_path(sys.argv[1], run_name="probed_single_file")["modules"].install()
from probed.values import parse_duration
parse_duration("bogus")
"""


@pytest.mark.parametrize("version", PYTHONS)
def test_a_traceback_line_maps_back_to_its_module(version: str, single_file: Path,
                                                  elsewhere: Path) -> None:
    python = python_or_skip(version)
    done = subprocess.run([python, "-I", "-S", "-c", RAISE_FROM_A_KNOWN_FUNCTION,
                           str(single_file)], cwd=str(elsewhere), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=RUN_TIMEOUT)
    assert "ValueError: expected a duration" in done.stderr, done.stderr
    frames = re.findall(r'^  File "([^"]+)", line (\d+), in (\S+)$', done.stderr, flags=re.M)
    path, line, function = frames[-1]
    assert (path, function) == (str(single_file), "parse_duration"), done.stderr
    file_line = single_file.read_text(encoding="utf-8").split("\n")[int(line) - 1]
    assert file_line.strip() in done.stderr  # the traceback shows the line's text
    where = run_single_file(python, single_file, ["--where", line], elsewhere)
    found = re.match(r"probed\.py:%s is probed/values\.py:(\d+), in parse_duration\n" % line,
                     where.stdout)
    assert found, where.stdout + where.stderr
    module_line = (REPO / "probed" / "values.py").read_text(encoding="utf-8").split(
        "\n")[int(found.group(1)) - 1]
    assert "#" + module_line == file_line and "raise ValueError" in module_line


class _HealthyBackend(http.server.BaseHTTPRequestHandler):
    """A backend whose /health answers 200 with an empty body, like vLLM's."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def healthy_backend() -> Iterator[str]:
    """The /health URL of a fake backend on loopback, served from a thread of this process."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthyBackend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/health" % server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def wait_for_status(daemon: SingleFileDaemon, path: str, status: int, timeout: float) -> bytes:
    """Probe `path` (new connection each time) until it answers `status`; returns the body."""
    deadline = time.monotonic() + timeout
    last: Tuple[int, bytes] = (0, b"")
    while time.monotonic() < deadline:
        code, _, body = daemon.http_probe(path)
        if code == status:
            return body
        last = (code, body)
        time.sleep(0.05)
    daemon.stop()
    pytest.fail("%s answered %s %r, not %d, for %ss:\n%s" % (
        path, last[0], last[1], status, timeout, daemon.output))


@pytest.mark.slow
@pytest.mark.parametrize("version", PYTHONS)
def test_daemon_answers_kubelet_probes_on_each_python(
        version: str, single_file: Path, elsewhere: Path, healthy_backend: str) -> None:
    python = python_or_skip(version)
    port = free_loopback_port()
    args = ["--addr", "127.0.0.1:%d" % port, "--drain-seconds", "0",
            "--check", "http name=backend url=%s interval=1s" % healthy_backend]
    with SingleFileDaemon(python, single_file, args, elsewhere, port) as daemon:
        wait_for_status(daemon, "/startupz", 200, START_TIMEOUT)
        assert wait_for_status(daemon, "/readyz?verbose", 200, START_TIMEOUT).startswith(
            b"[+]backend ok")
        assert daemon.http_probe("/livez")[0] == 200
        assert daemon.http_probe("/readyz", method="HEAD")[0] == 200
        assert daemon.tcp_probe()  # a tcpSocket probe: connect, send nothing, close
        assert daemon.http_probe("/no-such-path")[0] == 404
        assert daemon.stop() == 0, daemon.output


@pytest.mark.slow
@pytest.mark.parametrize("version", PYTHONS)
def test_daemon_polling_http_never_loads_ssl(
        version: str, single_file: Path, elsewhere: Path, healthy_backend: str) -> None:
    python = python_or_skip(version)
    port = free_loopback_port()
    args = ["--addr", "127.0.0.1:%d" % port, "--drain-seconds", "0",
            "--check", "http name=backend url=%s interval=1s" % healthy_backend]
    with SingleFileDaemon(python, single_file, args, elsewhere, port,
                          flags=["-X", "importtime"]) as daemon:
        wait_for_status(daemon, "/readyz", 200, START_TIMEOUT)  # it has polled the backend
        daemon.stop()
    rows = importtime_tree(daemon.output)
    assert "asyncio" in {name for _, name in rows}, "importtime output missing:\n" + daemon.output
    assert_not_loaded(rows, LAZY_ONLY_MODULES)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nothing else takes it), not listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("version", PYTHONS)
def test_a_plain_vllm_run_loads_no_ssl_ctypes_grpc_or_subcommand(
        version: str, single_file: Path, elsewhere: Path, closed_port: int) -> None:
    """The footprint guard that is not a timing: what a --vllm run (the bench's run) loads."""
    python = python_or_skip(version)
    port = free_loopback_port()
    args = ["--addr", "127.0.0.1:%d" % port, "--drain-seconds", "0", "--interval", "200ms",
            "--vllm", "http://127.0.0.1:%d" % closed_port, "--max-waiting", "8"]
    with SingleFileDaemon(python, single_file, args, elsewhere, port,
                          flags=["-X", "importtime"]) as daemon:
        assert daemon.http_probe("/livez")[0] in (200, 503)
        time.sleep(1.0)  # several polls of the refusing backend: the client's paths have run
        assert daemon.http_probe("/readyz")[0] == 503
        daemon.stop()
    rows = importtime_tree(daemon.output)
    names = {name for _, name in rows}
    assert {"asyncio", "probed.client", "probed.checks.metric"} <= names, daemon.output[-2000:]
    assert_not_loaded(rows, LAZY_ONLY_MODULES + GPU_ONLY_MODULES + GRPC_ONLY_MODULES
                      + SUBCOMMAND_ONLY_MODULES + UNUSED_KIND_MODULES + ADMIN_ONLY_MODULES
                      + HELP_ONLY_MODULES)
