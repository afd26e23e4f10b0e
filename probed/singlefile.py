"""The loader at the top of probed.py: the modules of probed/ are embedded below it, each whole
and line for line behind a `#`, and each is compiled when it is first imported, as `python3 -m
probed` would import it from disk. It reads a module's lines from the file when the module is
first imported, through a descriptor opened at start.

Why comments and not code, nor text in string constants: Python compiles a script whole before it
runs its first line, and the parser's peak memory for a big file stays in the process afterwards
(freed, but held by malloc): as one 360 KB body of code, probed.py idled at 40 MB on CPython 3.11,
22 MB compiled a module at a time from string constants, and about 1 MB less again with the
modules in comments, which the parser skips without making an object of them. Each module also
keeps its own namespace, as in the package, so the single file and the package cannot disagree
about what a name means, and no name needs a module prefix.

The descriptor stays open for the life of the process, so a module imported late (the gRPC stack
at the first HTTP/2 preface) comes from the file the process started from, even after a ConfigMap
update replaced the one at its path. Each module's bytes are checked (their length, and that they
are its lines, each behind a `#`) before they are compiled: a file changed in place is an
ImportError that says so.

Each module is compiled as if it stood at its lines in this file, so a traceback's
`probed.py, line N` is line N of this file (linecache, editors and `less +N` show the right line,
behind its `#`), and `python3 probed.py --where N` names the module, its line and the enclosing
function.

bundle.py copies this file into probed.py verbatim, above the embedded modules, and writes the
calls that fill and run it; it also reads modules back with `embedded_text`, so the two cannot
disagree about the format. The package never imports this module.
"""

import os
import stat
import sys
from importlib.machinery import ModuleSpec
from types import CodeType, ModuleType
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Set, Tuple, cast

if TYPE_CHECKING:  # importlib.abc costs 6 ms and several modules on 3.11: its name is enough
    from importlib.abc import Loader

WHERE_FLAG = "--where"  # `python3 probed.py --where LINE`: handled here, before any module loads
EMBED_PREFIX = "#"  # before each line of an embedded module: the parser skips comments whole


def embedded_text(data: bytes, lines: int) -> Optional[str]:
    """The source held in `data` (a newline, then `lines` lines each behind EMBED_PREFIX),
    behind that first newline; None when `data` is not that."""
    if not data.endswith(b"\n") or data.count(b"\n" + EMBED_PREFIX.encode()) != lines:
        return None
    return data.decode("utf-8").replace("\n" + EMBED_PREFIX, "\n")


class EmbeddedModules:
    """An import hook (finder and loader) that serves the package from the sources embedded in
    this file; `add` registers them, `run` starts the entry point, `where` maps lines."""

    def __init__(self, filename: str) -> None:
        self.filename = os.path.abspath(filename)  # what tracebacks name; linecache reads it
        # dotted name -> (path, line 1, byte offset, size, lines): see add()
        self.sources: Dict[str, Tuple[str, int, int, int, int]] = {}
        self.packages: Set[str] = set()
        self.ssl_deferred = False  # run() kept ssl out; probed/__init__.py asks its loader this
        self.fd: Optional[int] = None
        self.open_error = ""
        self.opened: Tuple[int, int] = (0, 0)  # size and mtime (ns) when opened
        try:
            # not inherited by children (PEP 446); O_NONBLOCK: a named pipe must not block here
            fd = os.open(self.filename, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self.open_error = exc.strerror or str(exc)
            return
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            self.fd, self.opened = fd, (info.st_size, info.st_mtime_ns)
        else:
            os.close(fd)
            self.open_error = "not a regular file: a pipe?"

    def add(self, path: str, first_line: int, offset: int, size: int, lines: int) -> None:
        """Register the module `path` (probed/pod.py), whose line 1 is line `first_line` here.

        Its text is the `size` bytes at `offset` of this file: the newline that ends the line
        calling add(), then each of its `lines` lines behind a `#`.
        """
        parts = path[:-len(".py")].split("/")
        if parts[-1] == "__init__":
            parts.pop()
            self.packages.add(".".join(parts))
        self.sources[".".join(parts)] = (path, first_line, offset, size, lines)

    def text(self, name: str) -> str:
        """The source of embedded module `name`, behind one newline (as add() describes it)."""
        path, _, offset, size, lines = self.sources[name]
        if self.fd is None:
            raise ImportError("cannot read %s from %s (%s): run the file itself, as in "
                              "`python3 probed.py`" % (path, self.filename, self.open_error))
        info = os.fstat(self.fd)  # the same size and mtime: nobody wrote over it since
        data = os.pread(self.fd, size, offset)
        text = embedded_text(data, lines) if len(data) == size else None
        if text is None or (info.st_size, info.st_mtime_ns) != self.opened:
            raise ImportError("%s changed after this process started (or its line ends were "
                              "converted): %s is no longer at bytes %d-%d; restart the process "
                              "with the file as generated" % (self.filename, path, offset,
                                                              offset + size))
        return text

    def find_spec(self, name: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[ModuleSpec]:
        """importlib's finder protocol: a spec for an embedded module, None for anything else."""
        if name not in self.sources:
            return None
        origin = "%s line %d" % (self.filename, self.sources[name][1])
        return ModuleSpec(name, cast("Loader", self), origin=origin,
                          is_package=name in self.packages)

    def create_module(self, spec: ModuleSpec) -> Optional[ModuleType]:
        """importlib's loader protocol: None asks for a plain module object."""
        return None

    def exec_module(self, module: ModuleType) -> None:
        """importlib's loader protocol: compile the module's text now and run it."""
        exec(self.compile(module.__name__), module.__dict__)

    def compile(self, name: str) -> CodeType:
        """The code of embedded module `name`, with this file's name and line numbers."""
        first_line = self.sources[name][1]
        return compile("\n" * (first_line - 2) + self.text(name), self.filename, "exec",
                       dont_inherit=True)

    def install(self) -> None:
        """Make `import probed...` load the embedded modules (before any other finder)."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def run(self, entry_module: str, entry_function: str, argv: Sequence[str]) -> int:
        """Run the single file: `--where`, or the entry point with ssl kept out until needed."""
        if list(argv[:1]) == [WHERE_FLAG]:
            return self.where_main(list(argv[1:]))
        if self.fd is None:
            print("%s: cannot read the modules it holds (%s): run the file itself, as in "
                  "`python3 probed.py`" % (self.filename, self.open_error), file=sys.stderr)
            return 2
        if "ssl" not in sys.modules:
            # asyncio imports ssl when it can (about 4 MB of RSS); probed needs it only for https
            # URLs, and probed.import_ssl() lifts this mark when a check really uses one.
            sys.modules["ssl"] = None  # type: ignore[assignment]
            self.ssl_deferred = True
        self.install()
        module = __import__(entry_module, fromlist=[entry_function])
        return int(getattr(module, entry_function)())

    def where_main(self, args: List[str]) -> int:
        """`--where LINE` or `--where [probed/]MODULE.py:LINE`: print the other side; 2 if bad."""
        try:
            if len(args) != 1:
                raise ValueError("give one LINE of probed.py, or MODULE.py:LINE")
            print(self.where(args[0]))
            return 0
        except (ValueError, ImportError) as exc:
            print("%s: %s %s: %s" % (os.path.basename(self.filename), WHERE_FLAG, " ".join(args),
                                    exc), file=sys.stderr)
            return 2

    def where(self, arg: str) -> str:
        """Map a line of this file to its module's line, or `MODULE.py:LINE` to this file's."""
        if arg.isdigit():
            line = int(arg)
            for name, (_, first, _, _, count) in self.sources.items():
                if first <= line < first + count:
                    return self.describe(name, line - first + 1, line)
            raise ValueError("line %d is outside every embedded module (the header, the loader "
                             "or the entry point: read it in this file)" % line)
        path, _, number = arg.rpartition(":")
        if not number.isdigit() or not path.endswith(".py"):
            raise ValueError("expected LINE or MODULE.py:LINE, e.g. 4512 or pod.py:138")
        found = [(name, entry[0], entry[1]) for name, entry in self.sources.items()
                 if ("/" + entry[0]).endswith("/" + path)]
        if len(found) != 1:
            raise ValueError("%s matches %s" % (path, ", ".join(sorted(p for _, p, _ in found))
                                                or "no module"))
        name, _, first = found[0]
        return self.describe(name, int(number), first + int(number) - 1)

    def describe(self, name: str, line: int, file_line: int) -> str:
        """`probed.py:4512 is probed/pod.py:113, in Pod.observe` and the line's text."""
        path, text = self.sources[name][0], self.text(name)
        lines = text.split("\n")[1:]
        if not 1 <= line < len(lines):
            raise ValueError("%s has %d lines" % (path, len(lines) - 1))
        scope = enclosing_definition(text[1:], line)
        return "%s:%d is %s:%d%s\n    %s" % (os.path.basename(self.filename), file_line, path,
                                            line, ", in " + scope if scope else "",
                                            lines[line - 1].strip() or "(a blank line)")


def enclosing_definition(source: str, line: int) -> str:
    """The dotted name of the innermost function or class around `line` ("" at module level)."""
    import ast  # only `--where` needs it

    names: List[str] = []
    body = ast.parse(source).body
    while True:
        for node in body:
            if (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                    and node.lineno <= line <= (node.end_lineno or node.lineno)):
                names.append(node.name)
                body = node.body
                break
        else:
            return ".".join(names)
