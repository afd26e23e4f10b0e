"""What the bundler reads from each module and the rules a module must follow to be bundled.

Pure functions over source text and `ast` trees (the only I/O: reading the package's files in
discover_modules). bundle.py turns the modules these functions accept into probed.py. Every
refusal names the file, the line where there is one, and the fix.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Set, Tuple


class BundleError(Exception):
    """Why the package cannot be bundled; the message names the module(s) and the fix."""


class SourceModule:
    """One module of the package: its text, parse tree and what the bundler learned from it."""

    def __init__(self, name: str, rel: str, inner: str, is_package: bool, text: str,
                 tree: ast.Module) -> None:
        self.name = name  # dotted: probed.checks.base
        self.rel = rel  # shown in banners and errors: probed/checks/base.py
        self.inner = inner  # relative to the package, as LAYERS names it: checks/base.py
        self.is_package = is_package  # an __init__.py
        self.text = text
        self.tree = tree
        self.deps: Dict[str, int] = {}  # dotted project module it imports -> line of the import
        self.imported: List[Tuple[str, str, int]] = []  # (module, name, line) of name imports
        self.bindings: Set[str] = set()  # names bound at module level


def _excluded(inner: str, excluded: Sequence[str]) -> bool:
    return any(inner == entry or (entry.endswith("/") and inner.startswith(entry))
               for entry in excluded)


def discover_modules(package_dir: Path, excluded: Sequence[str]
                     ) -> Tuple[List[SourceModule], Set[str]]:
    """Every bundled module of the package, read and parsed, sorted by dotted name; and the
    dotted names of the modules `excluded` leaves out."""
    package_dir = package_dir.resolve()
    if not (package_dir / "__init__.py").is_file():
        raise BundleError("%s is not a package: no __init__.py" % package_dir)
    root = package_dir.parent
    modules = []
    left_out: Set[str] = set()
    for path in sorted(package_dir.rglob("*.py")):
        inner = path.relative_to(package_dir).as_posix()
        if any(part.startswith((".", "__pycache__")) for part in inner.split("/")[:-1]):
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        if _excluded(inner, excluded) or path.name == "__main__.py":
            left_out.add(name)
            continue
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text, filename=rel)
        except UnicodeDecodeError as exc:
            raise BundleError("%s is not UTF-8 (%s)" % (rel, exc.reason)) from None
        except SyntaxError as exc:
            raise BundleError("%s line %s: %s" % (rel, exc.lineno, exc.msg)) from None
        modules.append(SourceModule(name, rel, inner, is_package, text, tree))
    return sorted(modules, key=lambda m: m.name), left_out


def check_embeddable(mod: SourceModule) -> None:
    """Refuse what the single file cannot give a module: `__file__` (an embedded module has no
    file of its own). Line ends need no check: the text is read as Python reads source, with
    \\r\\n and \\r already made \\n."""
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Name) and node.id == "__file__":
            raise BundleError("%s line %d uses __file__: in the single file a module has no file "
                              "of its own; keep data in the code" % (mod.rel, node.lineno))


def resolve_relative(mod: SourceModule, level: int, target: str) -> str:
    """The dotted module a `from <dots><target> import ...` in `mod` refers to."""
    package = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    if level > len(package):
        raise BundleError("%s: relative import goes above the package" % mod.rel)
    base = package[: len(package) - level + 1]
    return ".".join(base + ([target] if target else []))


def scan_imports(mod: SourceModule, by_name: Dict[str, SourceModule], left_out: Set[str],
                 package: str) -> None:
    """Record the project modules `mod` imports (anywhere in it: a function may import lazily)
    and the names it takes from them; refuse imports of what the file does not hold."""
    check_embeddable(mod)
    for node in ast.walk(mod.tree):
        targets: List[Tuple[str, List[str]]] = []
        if isinstance(node, ast.Import):
            line = node.lineno
            targets = [(a.name, []) for a in node.names
                       if a.name == package or a.name.startswith(package + ".")]
        elif isinstance(node, ast.ImportFrom):
            line = node.lineno
            names = [a.name for a in node.names]
            if node.level > 0:
                targets = [(resolve_relative(mod, node.level, node.module or ""), names)]
            elif node.module and (node.module == package
                                  or node.module.startswith(package + ".")):
                targets = [(node.module, names)]
        for target, names in targets:
            _record_import(mod, line, target, names, by_name, left_out)


def _record_import(mod: SourceModule, line: int, target: str, names: List[str],
                   by_name: Dict[str, SourceModule], left_out: Set[str]) -> None:
    for module in [target] + [target + "." + name for name in names]:
        if module in left_out:
            raise BundleError("%s line %d imports %s, which is left out of the single file "
                              "(EXCLUDED in bundle.py)" % (mod.rel, line, module))
    if target not in by_name:
        raise BundleError("%s line %d imports %s, which is not a module of the package" % (
            mod.rel, line, target))
    for name in names:
        submodule = target + "." + name
        if submodule in by_name:
            _add_dep(mod, submodule, line)
        elif name != "*":
            mod.imported.append((target, name, line))
    _add_dep(mod, target, line)


def _add_dep(mod: SourceModule, target: str, line: int) -> None:
    if target != mod.name and target not in mod.deps:
        mod.deps[target] = line


def _target_names(target: ast.AST) -> Iterator[str]:
    """Names an assignment target binds (`a`, `a, b = ...`, `*rest`); attributes bind none."""
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def _module_level(body: Sequence[ast.AST]) -> Iterator[ast.AST]:
    """Statements that run at module level, including inside top-level if/try/for/with blocks."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            inner = getattr(node, field, None)
            if isinstance(inner, list):
                yield from _module_level(inner)


def collect_bindings(mod: SourceModule) -> None:
    """Record the names the module binds at module level (what others may import from it)."""
    for node in _module_level(mod.tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mod.bindings.add(node.name)
        elif isinstance(node, ast.Assign):
            mod.bindings.update(n for t in node.targets for n in _target_names(t))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
            mod.bindings.update(_target_names(node.target))
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            mod.bindings.update(n for item in node.items if item.optional_vars
                                for n in _target_names(item.optional_vars))
        elif isinstance(node, ast.ExceptHandler) and node.name:
            mod.bindings.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mod.bindings.update((a.asname or a.name).split(".")[0] for a in node.names)


def check_imported_names(by_name: Dict[str, SourceModule]) -> None:
    """Every `from .x import NAME` must name something x binds at module level."""
    for mod in by_name.values():
        for target, name, line in mod.imported:
            if name not in by_name[target].bindings:
                raise BundleError("%s line %d imports %r from %s, which does not bind it at "
                                  "module level" % (mod.rel, line, name, by_name[target].rel))


def _layer_of(mod: SourceModule, layers: Sequence[Sequence[str]]) -> Tuple[int, int]:
    """(layer index, position in that layer's list) of a module; refuses none or several."""
    hits = [(i, j) for i, entries in enumerate(layers) for j, entry in enumerate(entries)
            if mod.inner == entry or (entry.endswith("/") and mod.inner.startswith(entry))]
    if not hits:
        raise BundleError("%s is in no layer of the single file: add %r to the layer it belongs "
                          "to in LAYERS in bundle.py (the lowest layer at or after every layer "
                          "it imports from)" % (mod.rel, mod.inner))
    if len({i for i, _ in hits}) > 1:
        raise BundleError("%s is in %d layers of LAYERS in bundle.py; list it in one" % (
            mod.rel, len({i for i, _ in hits})))
    return hits[0]


def order_by_layer(modules: Sequence[SourceModule], layers: Sequence[Sequence[str]],
                   package: str) -> List[Tuple[SourceModule, int]]:
    """(module, layer index) in file order: layer by layer; within one, dependencies first, ties
    in the order the layer lists them. Refuses imports from a later layer and import cycles."""
    by_name = {m.name: m for m in modules}
    rank = {m.name: _layer_of(m, layers) for m in modules}
    for mod in modules:
        for target, line in sorted(mod.deps.items(), key=lambda kv: kv[1]):
            if rank[target][0] > rank[mod.name][0]:
                raise BundleError("%s line %d imports from %s, which is in layer %d, after %s's "
                                  "layer %d: move one of them in LAYERS in bundle.py, or move "
                                  "what both need into the earlier layer" % (
                                      mod.rel, line, by_name[target].rel, rank[target][0] + 1,
                                      mod.rel, rank[mod.name][0] + 1))
    ordered: List[Tuple[SourceModule, int]] = []
    for index in range(len(layers)):
        waiting = {m.name: {d for d in m.deps if rank[d][0] == index}
                   for m in modules if rank[m.name][0] == index}
        while waiting:
            ready = [name for name, deps in waiting.items() if not deps]
            if not ready:
                raise BundleError("import cycle: %s; move the shared names into a module both "
                                  "can import" % " -> ".join(
                                      by_name[n].rel for n in _find_cycle(waiting)))
            name = min(ready, key=lambda n: (rank[n][1], n))
            ordered.append((by_name[name], index))
            del waiting[name]
            for deps in waiting.values():
                deps.discard(name)
    return ordered


def _find_cycle(remaining: Dict[str, Set[str]]) -> List[str]:
    """A dependency cycle among modules that could not be ordered (each has a remaining dep)."""
    path: List[str] = []
    node = min(remaining)
    while node not in path:
        path.append(node)
        node = min(remaining[node] & set(remaining))
    return path[path.index(node):] + [node]
