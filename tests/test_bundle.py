"""The bundler (probed/bundle.py, bundlerules.py) and the loader it writes (singlefile.py): layers,
order, verbatim modules, line numbers, refusals, --where, --check, and the committed file.

Most tests bundle small synthetic packages written to tmp dirs with layers of their own, so they
pin the bundler's rules whatever the real package contains; the last ones hold the real probed/
to them. tests/test_single_file.py runs the real file on every Python.
"""

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from probed import bundle  # noqa: E402  (after making the repo importable under plain `pytest`)
from probed.bundle import BundleError, Layer  # noqa: E402

RUN_TIMEOUT = 60.0

INIT = '''\
"""pkg: a synthetic package for bundler tests."""

__version__ = "9.8.7"
'''

CLI = '''\
"""Command line of the synthetic package."""

import sys
from typing import List, Optional

from . import __version__


def main(argv: Optional[List[str]] = None) -> int:
    """Print the version and exit 0."""
    print("pkg", __version__, *(sys.argv[1:] if argv is None else argv))
    return 0
'''

# Layers for the synthetic packages: the package, everything the tests name, the command line.
MIDDLE = ("values.py", "a.py", "b.py", "c.py", "one.py", "two.py", "user.py", "lazy.py",
          "boom.py", "checks/")
LAYERS = (Layer("package", "the version", ("__init__.py",)),
          Layer("middle", "what the tests add", MIDDLE),
          Layer("cli", "the command line", ("cli.py",)))


def make_package(root: Path, files: Dict[str, str], name: str = "pkg") -> Path:
    """Write a package under `root` with a default __init__ and cli; `files` adds or replaces."""
    package = root / name
    for rel, text in dict({"__init__.py": INIT, "cli.py": CLI}, **files).items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return package


def build(root: Path, files: Dict[str, str], layers: Sequence[Layer] = LAYERS) -> str:
    return bundle.build_bundle(make_package(root, files), layers)


def write(root: Path, files: Dict[str, str], layers: Sequence[Layer] = LAYERS) -> Path:
    """Bundle a synthetic package into root/pkg.py and return its path."""
    out = root / "pkg.py"
    out.write_text(build(root, files, layers), encoding="utf-8")
    return out


def module_order(text: str) -> List[str]:
    """The module paths embedded in a bundle, in file order."""
    return [path for path, _, _ in bundle.embedded_sources(text)]


def run_bundle(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-I", "-S", str(path)] + list(args),
                          cwd=str(path.parent), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=RUN_TIMEOUT)


def build_error(tmp_path: Path, files: Dict[str, str], layers: Sequence[Layer] = LAYERS) -> str:
    """The BundleError message a package with `files` gets."""
    with pytest.raises(BundleError) as caught:
        build(tmp_path, files, layers)
    return str(caught.value)


# --- layers and order ----------------------------------------------------------------------------

def test_layers_in_declared_order_dependencies_first_ties_as_listed(tmp_path: Path) -> None:
    layers = (Layer("package", "v", ("__init__.py",)),
              Layer("low", "l", ("zeta.py", "beta.py", "gamma.py")),
              Layer("high", "h", ("alpha.py", "cli.py")))
    text = build(tmp_path, {
        "alpha.py": "from .zeta import Z\nA = Z + 1\n",
        "zeta.py": "from .beta import B\nZ = B + 1\n",
        "beta.py": "B = 1\n",
        "gamma.py": "G = 1\n",
    }, layers)
    # zeta is listed first but needs beta; gamma keeps its listed place after them.
    assert module_order(text) == ["pkg/__init__.py", "pkg/beta.py", "pkg/zeta.py",
                                  "pkg/gamma.py", "pkg/alpha.py", "pkg/cli.py"]
    banners = [line for line in text.splitlines() if line.startswith("# Layer ")]
    assert banners == ["# Layer 1 of 3: package: v", "# Layer 2 of 3: low: l",
                       "# Layer 3 of 3: high: h"]


def test_a_module_in_no_layer_is_refused_naming_it_and_the_fix(tmp_path: Path) -> None:
    message = build_error(tmp_path, {"stray.py": "S = 1\n"})
    assert "pkg/stray.py is in no layer" in message
    assert "add 'stray.py'" in message and "LAYERS in bundle.py" in message


@pytest.mark.parametrize("source", [
    "from .cli import main\n",
    "def later():\n    from .cli import main\n    return main\n",  # a lazy import counts too
    "import pkg.cli\n",
])
def test_an_import_from_a_later_layer_is_refused(tmp_path: Path, source: str) -> None:
    message = build_error(tmp_path, {"values.py": source})
    assert re.search(r"pkg/values\.py line \d imports from pkg/cli\.py, which is in layer 3, "
                     r"after pkg/values\.py's layer 2", message), message


def test_a_module_in_two_layers_is_refused(tmp_path: Path) -> None:
    layers = LAYERS + (Layer("again", "twice", ("values.py",)),)
    assert "pkg/values.py is in 2 layers" in build_error(tmp_path, {"values.py": "V = 1\n"},
                                                         layers)


def test_listed_modules_that_do_not_exist_yet_are_skipped(tmp_path: Path) -> None:
    text = build(tmp_path, {})  # LAYERS lists values.py, checks/ ... none of which exist here
    assert module_order(text) == ["pkg/__init__.py", "pkg/cli.py"]
    assert "Layer 2" not in text  # an empty layer gets no banner


def test_an_import_cycle_is_refused_naming_it(tmp_path: Path) -> None:
    message = build_error(tmp_path, {"a.py": "from .b import B\nA = 1\n",
                                     "b.py": "from .c import C\nB = 1\n",
                                     "c.py": "def f():\n    from .a import A\n    return A\nC = 1\n"})
    assert "import cycle: pkg/a.py -> pkg/b.py -> pkg/c.py -> pkg/a.py" in message


# --- the file: header, contents, verbatim modules ----------------------------------------------

def test_build_is_deterministic_and_independent_of_location(tmp_path: Path) -> None:
    files = {"b.py": "B = 2\n", "a.py": "from .b import B\nA = B\n", "checks/__init__.py": "",
             "checks/c.py": "from ..a import A\nC = A\n"}
    first = build(tmp_path / "one", files)
    reordered = dict(reversed(list(files.items())))
    assert build(tmp_path / "two" / "deeper", reordered) == first
    assert build(tmp_path / "one", files) == first
    assert str(tmp_path) not in first


def test_header_says_generated_how_to_regenerate_the_version_and_where(tmp_path: Path) -> None:
    text = build(tmp_path, {})
    first = text.splitlines()[0]
    assert first.startswith("# pkg.py: GENERATED by `python3 -m pkg.bundle`")
    assert "Do not edit" in first
    header = text[: text.index('"""')]
    assert "9.8.7" in header
    assert "`python3 -m pkg.bundle --check`" in header
    assert "python3 pkg.py --where N" in header
    assert all(line.startswith("#") or not line for line in header.splitlines())


def test_contents_give_the_line_each_module_begins_on(tmp_path: Path) -> None:
    files = {"values.py": '"""Values."""\nV = 1\n', "checks/__init__.py": '"""Checks."""\n',
             "checks/base.py": '"""Base."""\nfrom ..values import V\n'}
    text = build(tmp_path, files)
    lines = text.split("\n")
    rows = re.findall(r"^#\s+(\S.*?) \.+ +(\d+)$", text, flags=re.M)
    assert [label for label, _ in rows] == [
        "the loader (singlefile.py, verbatim)", "pkg/__init__.py", "pkg/values.py",
        "pkg/checks/__init__.py", "pkg/checks/base.py", "pkg/cli.py", "entry point"]
    table = dict(rows)
    assert lines[int(table["the loader (singlefile.py, verbatim)"]) - 1].startswith(
        '"""The loader at the top of probed.py')
    package = tmp_path / "pkg"
    for path in ("pkg/__init__.py", "pkg/values.py", "pkg/checks/base.py", "pkg/cli.py"):
        first_line = (package.parent / path).read_text(encoding="utf-8").split("\n")[0]
        assert lines[int(table[path]) - 1] == "#" + first_line, path
    assert lines[int(table["entry point"])].startswith("# Entry point")


def test_every_module_reads_back_verbatim_at_its_banner_offset(tmp_path: Path) -> None:
    tricky = ('"""Tricky: a backslash at the end\\\\ and quotes ""\\" \' "."""\n\n'
              "import re\n\n"
              "DOC = '''three quotes'''\n"
              "# a comment at column 0, then a blank line\n\n"
              "PATTERN = re.compile(r'\\d+\\\\')  # a raw string ending in a backslash\n"
              "TABS = '\\t'\t# a real tab before this comment\n"
              "UNICODE = 'µs – ✓'\n")
    text = build(tmp_path, {"values.py": tricky})
    embedded = {path: (first, source) for path, first, source in bundle.embedded_sources(text)}
    first, source = embedded["pkg/values.py"]
    assert source == tricky
    lines = text.split("\n")
    assert lines[first - 1: first - 1 + source.count("\n")] == \
        ["#" + line for line in source.split("\n")[:-1]]
    offset = first - 1
    assert ("# pkg/values.py: its lines 1-%d are lines %d-%d here (file line = module line "
            "+ %d)" % (source.count("\n"), first, first + source.count("\n") - 1, offset)) in text
    for path in ("pkg/__init__.py", "pkg/cli.py"):
        assert embedded[path][1] == (tmp_path / path).read_text(encoding="utf-8")


def test_excluded_files_and_directories_are_not_bundled(tmp_path: Path) -> None:
    text = build(tmp_path, {
        "bundle.py": "def main():\n    pass\n",
        "__main__.py": "from .cli import main\n\nif __name__ == '__main__':\n    main()\n",
        "sim/__init__.py": '"""The simulator."""\n', "sim/engine.py": "E = 1\n",
        "sim/demo.py": "D = 1\n",
    })
    assert module_order(text) == ["pkg/__init__.py", "pkg/cli.py"]
    assert text.endswith('if __name__ == "__main__":\n'
                         '    raise SystemExit(modules.run("pkg.cli", "main", sys.argv[1:]))\n')


@pytest.mark.parametrize("source, left_out", [
    ("from .sim.engine import E\n", "pkg.sim.engine"),
    ("from .sim import engine\n", "pkg.sim"),
    ("from .sim.demo import D\n", "pkg.sim.demo"),
])
def test_importing_what_the_file_leaves_out_is_refused(tmp_path: Path, source: str,
                                                       left_out: str) -> None:
    message = build_error(tmp_path, {"sim/__init__.py": "", "sim/engine.py": "E = 1\n",
                                     "sim/demo.py": "D = 1\n", "values.py": source})
    assert "pkg/values.py line 1 imports %s, which is left out of the single file" % left_out \
        in message


# --- the file runs as the package would --------------------------------------------------------

def test_each_module_keeps_its_own_namespace(tmp_path: Path) -> None:
    """Two modules may bind the same name: no prefixes, no renaming, nothing to refuse."""
    out = write(tmp_path, {
        "one.py": '''\
            from __future__ import annotations  # compiled on its own, so this is allowed

            REDACTED = "<one>"


            def _parse(text: str) -> int:
                return int(text)
            ''',
        "two.py": '''\
            import json as TimeoutError  # shadows a builtin, in this module only
            from .one import _parse as parse_one

            REDACTED = "<two>"


            def _parse(text: str) -> int:
                return parse_one(text) * 2


            if __name__ == "__main__":
                raise SystemExit("a module's main block must not run in the single file")
            ''',
        "cli.py": '''\
            import builtins

            import pkg.two
            from . import one
            from .two import *  # noqa: F403 (public names only: REDACTED, TimeoutError...)


            def main() -> int:
                print(one.REDACTED, pkg.two.REDACTED, REDACTED, one._parse("3"),
                      pkg.two._parse("3"), TimeoutError.__name__, builtins.TimeoutError.__name__)
                return 0
            ''',
    })
    done = run_bundle(out)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "<one> <two> <two> 3 6 json TimeoutError\n"


def test_a_module_is_compiled_only_when_first_imported(tmp_path: Path) -> None:
    out = write(tmp_path, {
        "lazy.py": 'print("lazy compiled")\nNAME = "lazy"\n',
        "cli.py": '''\
            import sys


            def main() -> int:
                if sys.argv[1:] == ["use"]:
                    from .lazy import NAME
                    print("used", NAME)
                print("done", sorted(m for m in sys.modules if m.startswith("pkg")))
                return 0
            ''',
    })
    done = run_bundle(out)
    assert done.stdout == "done ['pkg', 'pkg.cli']\n", done.stderr
    done = run_bundle(out, "use")
    assert done.stdout == ("lazy compiled\nused lazy\ndone ['pkg', 'pkg.cli', 'pkg.lazy']\n"), \
        done.stderr


def loader_of(path: Path) -> Any:
    """The EmbeddedModules of a built file, filled but not run (its __name__ is not __main__)."""
    namespace: Dict[str, Any] = {"__file__": str(path), "__name__": "not_main"}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace["modules"]


def test_a_module_is_read_from_the_file_the_process_started_from(tmp_path: Path) -> None:
    out = write(tmp_path, {"lazy.py": 'NAME = "lazy"\n'})
    loader = loader_of(out)
    original = out.read_bytes()
    # A ConfigMap update swaps the file at the path: a late import still reads the first one.
    swapped = tmp_path / "new.py"
    swapped.write_bytes(original.replace(b'#NAME = "lazy"', b'#NAME = "LAZY"'))
    swapped.replace(out)
    namespace: Dict[str, Any] = {}
    exec(loader.compile("pkg.lazy"), namespace)
    assert namespace["NAME"] == "lazy"
    # The same file changed in place: refused, saying so, rather than compiling other bytes.
    fresh = loader_of(out)
    with open(str(out), "r+b") as f:
        f.write(original.replace(b'#NAME = "lazy"', b'NAME = "lazy"#'))
    with pytest.raises(ImportError) as caught:
        fresh.compile("pkg.lazy")
    assert "changed after this process started (or its line ends were converted): " \
        "pkg/lazy.py is no longer at bytes" in \
        str(caught.value)
    # Changed in place at the same length: the file's size and mtime say so.
    same = loader_of(out)
    time.sleep(0.01)
    with open(str(out), "r+b") as f:
        f.write(original.replace(b'#NAME = "lazy"', b'#NAME = "LAZY"'))
    with pytest.raises(ImportError, match="changed after this process started"):
        same.compile("pkg.lazy")
    # No file to read (the text piped to `python3 -`): the import says how to run it.
    orphan = type(fresh)(str(tmp_path / "gone.py"))
    orphan.add("pkg/lazy.py", 10, 100, 20, 1)
    with pytest.raises(ImportError) as caught:
        orphan.compile("pkg.lazy")
    assert "cannot read pkg/lazy.py from %s (No such file or directory): run the file itself" % (
        tmp_path / "gone.py") in str(caught.value)


def test_line_ends_converted_to_crlf_are_named(tmp_path: Path) -> None:
    out = write(tmp_path, {})
    out.write_bytes(out.read_bytes().replace(b"\n", b"\r\n"))  # a Windows checkout, say
    done = run_bundle(out)
    assert done.returncode == 1 and "ImportError: %s changed after this process started (or " \
        "its line ends were converted): pkg/__init__.py is no longer at bytes" % out \
        in done.stderr, done.stderr
    first = bundle.embedded_sources(build(tmp_path / "b", {}))[0][1]
    where = run_bundle(out, "--where", str(first))
    assert where.returncode == 2 and where.stderr.startswith(
        "pkg.py: --where %d: %s changed after" % (first, out)), where.stderr


def test_a_file_read_from_a_pipe_says_to_run_the_file(tmp_path: Path) -> None:
    out = write(tmp_path, {})
    done = subprocess.run([sys.executable, "-I", "-S", "/dev/stdin"], input=out.read_text(
        encoding="utf-8"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 2 and done.stderr == (
        "/dev/stdin: cannot read the modules it holds (not a regular file: a pipe?): run the "
        "file itself, as in `python3 probed.py`\n"), done.stderr


BOOM = '''\
"""A module whose function fails on purpose."""


class Thrower:
    """Raises from a known line."""

    def boom(self) -> None:
        """Fail."""
        raise ValueError("boom from a known line")
'''
BOOM_LINE = 9  # the raise, in BOOM
CLI_BOOM = '''\
from .boom import Thrower


def main() -> int:
    Thrower().boom()
    return 0
'''


def traceback_frames(stderr: str) -> List[Tuple[str, int, str]]:
    """(file, line, function) of each frame of a traceback."""
    return [(f, int(n), fn) for f, n, fn in re.findall(
        r'^  File "([^"]+)", line (\d+), in (\S+)$', stderr, flags=re.M)]


def test_a_traceback_names_this_file_and_where_maps_it_back(tmp_path: Path) -> None:
    out = write(tmp_path, {"boom.py": BOOM, "cli.py": CLI_BOOM})
    done = run_bundle(out)
    assert done.returncode == 1 and "ValueError: boom from a known line" in done.stderr
    path, line, function = traceback_frames(done.stderr)[-1]
    assert (Path(path), function) == (out, "boom")
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[line - 1] == '#        raise ValueError("boom from a known line")'
    assert 'raise ValueError("boom from a known line")' in done.stderr  # linecache found it
    where = run_bundle(out, "--where", str(line))
    assert where.returncode == 0, where.stderr
    assert where.stdout == ('pkg.py:%d is pkg/boom.py:%d, in Thrower.boom\n'
                            '    raise ValueError("boom from a known line")\n' % (
                                line, BOOM_LINE))
    back = run_bundle(out, "--where", "boom.py:%d" % BOOM_LINE)
    assert back.stdout.startswith("pkg.py:%d is pkg/boom.py:%d" % (line, BOOM_LINE))
    first = bundle.embedded_sources(out.read_text(encoding="utf-8"))[1][1]
    assert run_bundle(out, "--where", str(first + 2)).stdout.startswith(
        "pkg.py:%d is pkg/boom.py:3\n" % (first + 2))  # module level: no function named


@pytest.mark.parametrize("args, expected", [
    (["1"], "line 1 is outside every embedded module"),
    (["nope.py:3"], "nope.py matches no module"),
    (["boom.py:999"], "pkg/boom.py has 9 lines"),
    (["pod"], "expected LINE or MODULE.py:LINE"),
    ([], "give one LINE"),
])
def test_where_explains_what_it_cannot_map(tmp_path: Path, args: List[str],
                                           expected: str) -> None:
    out = write(tmp_path, {"boom.py": BOOM, "cli.py": CLI_BOOM})
    done = run_bundle(out, "--where", *args)
    assert done.returncode == 2 and expected in done.stderr, done.stderr


# --- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("source, expected", [
    ("HERE = __file__\n", "pkg/user.py line 1 uses __file__"),
    ("X = 1", "pkg/user.py does not read back verbatim from pkg.py (check it for carriage returns "
              "and a missing final newline)"),
    ("from .missing import V\n", "pkg.missing, which is not a module of the package"),
    ("from .values import NOPE\n", "pkg/user.py line 1 imports 'NOPE' from pkg/values.py, "
                                   "which does not bind it"),
    ("def f():\n    from .values import NOPE\n", "line 2 imports 'NOPE'"),
])
def test_what_a_single_file_cannot_hold_is_refused(tmp_path: Path, source: str,
                                                   expected: str) -> None:
    package = make_package(tmp_path, {"values.py": "V = 1\n"})
    (package / "user.py").write_bytes(source.encode("utf-8"))  # as is: no newline translation
    with pytest.raises(BundleError) as caught:
        bundle.build_bundle(package, LAYERS)
    assert expected in str(caught.value)


def test_an_entry_point_and_a_version_are_required(tmp_path: Path) -> None:
    assert "pkg/cli.py must define main(" in build_error(
        tmp_path / "a", {"cli.py": "def run():\n    pass\n"})
    assert "__version__" in build_error(tmp_path / "b", {"__init__.py": '"""No version."""\n'})


# --- command line ------------------------------------------------------------------------------

def test_command_line_writes_then_checks(tmp_path: Path) -> None:
    package = make_package(tmp_path, {"values.py": "V = 1\n"})
    out = tmp_path / "out" / "pkg.py"
    out.parent.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "probed.bundle", "--package", str(package), "--output",
             str(out)] + list(args), cwd=str(REPO), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True, timeout=RUN_TIMEOUT)

    done = cli("--check")
    assert done.returncode == 1 and "pkg.py does not exist" in done.stdout
    done = cli()  # the real LAYERS: values.py and cli.py are in them, __init__.py too
    assert done.returncode == 0, done.stderr
    assert out.read_text(encoding="utf-8") == bundle.build_bundle(package)
    done = cli("--check")
    assert done.returncode == 0 and "up to date" in done.stdout
    (package / "values.py").write_text("V = 2\n", encoding="utf-8")
    done = cli("--check")
    assert done.returncode == 1
    assert "pkg.py is stale" in done.stdout
    assert "\n-#V = 1\n+#V = 2\n" in done.stdout
    assert "run `python3 -m pkg.bundle`" in done.stdout
    (package / "stray.py").write_text("S = 3\n", encoding="utf-8")
    done = cli()
    assert done.returncode == 2 and "bundle: error: pkg/stray.py is in no layer" in done.stderr


def test_the_stale_report_shows_only_the_first_diff_lines(tmp_path: Path) -> None:
    body = "".join("N%d = %d\n" % (i, i) for i in range(200))
    package = make_package(tmp_path, {"values.py": body})
    out = tmp_path / "pkg.py"
    out.write_text(bundle.build_bundle(package, LAYERS), encoding="utf-8")
    (package / "values.py").write_text(body.replace(" = ", " == 0 or "), encoding="utf-8")
    fresh, report = bundle.check_bundle(package, out, LAYERS)
    assert not fresh
    assert len(report.splitlines()) == bundle.CHECK_DIFF_LINES + 3
    assert "more diff lines" in report


def test_writing_over_the_budget_warns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    package = make_package(tmp_path, {"values.py": "V = 1\n"})
    monkeypatch.setattr(bundle, "SIZE_BUDGET_BYTES", 100)
    assert bundle.main(["--package", str(package), "--output", str(tmp_path / "pkg.py")]) == 0
    assert "over the 100 byte budget" in capsys.readouterr().err


# --- the real package --------------------------------------------------------------------------

def test_committed_probed_py_is_up_to_date() -> None:
    fresh, report = bundle.check_bundle(REPO / "probed", REPO / "probed.py")
    assert fresh, report


def test_probed_layers_come_in_the_declared_reading_order() -> None:
    assert [layer.name for layer in bundle.LAYERS] == [
        "package", "wire format", "values", "client and shared resources", "checks", "pod",
        "scheduler", "server and router", "daemon", "cli"]
    text = (REPO / "probed.py").read_text(encoding="utf-8")
    order = module_order(text)
    assert order[0] == "probed/__init__.py" and order[-1] == "probed/cli.py"
    assert order.index("probed/httpproto.py") < order.index("probed/values.py") \
        < order.index("probed/checks/base.py") < order.index("probed/pod.py") \
        < order.index("probed/scheduler.py") < order.index("probed/server.py") \
        < order.index("probed/daemon.py")
    assert not any(path.startswith("probed/sim/")
                   for path in order)
