"""Dockerfile.distroless, tested without a Docker engine (there is none here, nor in CI).

A small parser reads the file the way the builder's front end does (parser directives, comments,
line continuations, exec-form JSON arrays, `--flag=value` options); the tests then check what an
image build would give: a pinned distroless Python base, a non-root numeric user, probed.py as
the only file copied in, an exec-form ENTRYPOINT that runs that file with -I -S, and EXPOSE
matching probed's default listener port. What needs an engine (the build, the run) is not tested.
"""

import json
import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from probed import bundle  # noqa: E402  (after making the repo importable under plain `pytest`)

DOCKERFILE = REPO / "Dockerfile.distroless"
BASE_IMAGE = "gcr.io/distroless/python3-debian12"
BASE_PYTHON = "/usr/bin/python3"  # where distroless python3 images keep the interpreter
NONROOT_UID = 65532  # distroless's "nonroot" user
RUN_TIMEOUT = 60.0

INSTRUCTIONS = frozenset((
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"))
EXEC_FORM = frozenset(("ADD", "CMD", "COPY", "ENTRYPOINT", "RUN", "SHELL", "VOLUME"))
WITH_FLAGS = frozenset(("ADD", "COPY", "FROM", "RUN", "HEALTHCHECK"))
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(\S+)\s*$")
_FLAG = re.compile(r"--([a-z][a-z-]*)(?:=(\S*))?$")


class DockerfileError(ValueError):
    """The text is not a Dockerfile this parser understands; the message has the line."""


class Instruction:
    """One instruction: keyword, `--flags`, raw arguments, and the JSON array if exec form."""

    def __init__(self, keyword: str, flags: Dict[str, str], args: str,
                 exec_form: Optional[List[str]], line: int) -> None:
        self.keyword = keyword
        self.flags = flags
        self.args = args
        self.exec_form = exec_form
        self.line = line


def _logical_lines(text: str) -> List[tuple]:
    """(first line number, joined text) per instruction, with directives, comments removed."""
    escape, directives_open = "\\", True
    logical, parts, start = [], [], 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        directive = _DIRECTIVE.match(stripped) if directives_open else None
        if directive:
            if directive.group(1).lower() == "escape":
                escape = directive.group(2)
            continue
        directives_open = False
        if not stripped or stripped.startswith("#"):
            continue  # comments and blank lines vanish, even inside a continuation
        if not parts:
            start = number
        if stripped.endswith(escape):
            parts.append(stripped[:-1])
            continue
        parts.append(stripped)
        logical.append((start, " ".join(p.strip() for p in parts)))
        parts = []
    if parts:
        raise DockerfileError("line %d: continuation runs past the end of the file" % start)
    return logical


def parse_dockerfile(text: str) -> List[Instruction]:
    """Parse Dockerfile text into instructions; raise DockerfileError on anything unexpected."""
    instructions = []
    for line, joined in _logical_lines(text):
        keyword, _, rest = joined.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword not in INSTRUCTIONS:
            raise DockerfileError("line %d: unknown instruction %r" % (line, keyword))
        if not rest:
            raise DockerfileError("line %d: %s needs arguments" % (line, keyword))
        if "<<" in rest:
            raise DockerfileError("line %d: heredocs are not supported here" % line)
        flags: Dict[str, str] = {}
        while keyword in WITH_FLAGS and rest.startswith("--"):
            token, _, rest = rest.partition(" ")
            match = _FLAG.match(token)
            if not match:
                raise DockerfileError("line %d: bad flag %r" % (line, token))
            flags[match.group(1)] = match.group(2) or ""
            rest = rest.strip()
        exec_form = None
        if keyword in EXEC_FORM and rest.startswith("["):
            try:
                exec_form = json.loads(rest)
            except ValueError:
                raise DockerfileError("line %d: %s is not a valid JSON array" % (
                    line, keyword)) from None
            if not isinstance(exec_form, list) or not all(isinstance(a, str) for a in exec_form):
                raise DockerfileError("line %d: %s must be an array of strings" % (line, keyword))
        instructions.append(Instruction(keyword, flags, rest, exec_form, line))
    if not instructions or next(
            (i for i in instructions if i.keyword != "ARG"), instructions[0]).keyword != "FROM":
        raise DockerfileError("the first instruction (after ARGs) must be FROM")
    return instructions


def only(instructions: List[Instruction], keyword: str) -> Instruction:
    """The single instruction with `keyword`; fails the test if there are none or several."""
    found = [i for i in instructions if i.keyword == keyword]
    assert len(found) == 1, "expected exactly one %s, found %d" % (keyword, len(found))
    return found[0]


def copied_file_path(instructions: List[Instruction]) -> str:
    """Where the COPY puts probed.py in the image (absolute, WORKDIR applied)."""
    copy = only(instructions, "COPY")
    sources = copy.exec_form or copy.args.split()
    dest = sources[-1]
    workdir = "/"
    for instruction in instructions:
        if instruction.keyword == "WORKDIR" and instruction.line < copy.line:
            workdir = posixpath.join(workdir, instruction.args)
    if dest.endswith("/"):
        dest += "probed.py"
    return posixpath.normpath(posixpath.join(workdir, dest))


@pytest.fixture(scope="module")
def dockerfile() -> List[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def test_the_parser_handles_what_dockerfiles_contain() -> None:
    parsed = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG TAG=x\n# a comment\nfrom img:${TAG} AS base\n"
        "COPY --chown=1:1 a \\\n  # dropped\n  b /dst/\nENTRYPOINT [\"/bin/x\", \"-y\"]\n"
        "CMD run it\n")
    assert [i.keyword for i in parsed] == ["ARG", "FROM", "COPY", "ENTRYPOINT", "CMD"]
    assert parsed[2].flags == {"chown": "1:1"} and parsed[2].args == "a b /dst/"
    assert parsed[3].exec_form == ["/bin/x", "-y"]
    assert parsed[4].exec_form is None and parsed[4].args == "run it"


@pytest.mark.parametrize("text, message", [
    ("FROM x\nFETCH y\n", "line 2: unknown instruction 'FETCH'"),
    ("COPY a b\nFROM x\n", "must be FROM"),
    ("FROM x\nENTRYPOINT [\"a\",\n", "not a valid JSON array"),
    ("FROM x\nUSER\n", "USER needs arguments"),
    ("FROM x\nRUN <<EOF\nEOF\n", "heredocs"),
    ("FROM x\nEXPOSE 1 \\\n", "continuation runs past the end"),
])
def test_the_parser_rejects_what_it_does_not_understand(text: str, message: str) -> None:
    with pytest.raises(DockerfileError) as caught:
        parse_dockerfile(text)
    assert message in str(caught.value)


def test_single_stage_on_distroless_python_pinned_by_tag(dockerfile: List[Instruction]) -> None:
    base = only(dockerfile, "FROM")
    image, _, tag = base.args.split()[0].partition(":")
    assert image == BASE_IMAGE
    assert tag and tag != "latest" and "$" not in tag, "pin the base image by tag: %r" % tag
    assert not [i for i in dockerfile if i.keyword == "ARG"], "no build-time knobs on the base"


def test_runs_as_a_numeric_non_root_user(dockerfile: List[Instruction]) -> None:
    user = [i for i in dockerfile if i.keyword == "USER"]
    assert user, "USER is required: the base image's default must not be relied on"
    uid, _, gid = user[-1].args.partition(":")
    assert uid.isdigit() and int(uid) == NONROOT_UID, "numeric uid %d, got %r" % (
        NONROOT_UID, uid)
    assert not gid or (gid.isdigit() and int(gid) != 0)
    assert only(dockerfile, "FROM").args.split()[0].endswith(":nonroot")


def test_copies_only_probed_py_and_runs_nothing_at_build(dockerfile: List[Instruction]) -> None:
    assert not [i.line for i in dockerfile if i.keyword in ("ADD", "RUN", "ONBUILD")], \
        "distroless has no shell (RUN) and ADD can fetch URLs or unpack archives"
    copy = only(dockerfile, "COPY")
    assert "from" not in copy.flags
    sources = (copy.exec_form or copy.args.split())[:-1]
    assert sources == ["probed.py"]


def test_entrypoint_exec_form_runs_the_copied_file_isolated(
        dockerfile: List[Instruction]) -> None:
    entry = only(dockerfile, "ENTRYPOINT")
    argv = entry.exec_form
    assert argv is not None, "ENTRYPOINT must be exec form: distroless has no /bin/sh"
    assert argv[0] == BASE_PYTHON
    assert copied_file_path(dockerfile) in argv, argv
    script_at = argv.index(copied_file_path(dockerfile))
    assert {"-I", "-S"} <= set(argv[1:script_at]), "run the file with -I -S: %s" % argv
    for cmd in (i for i in dockerfile if i.keyword == "CMD"):
        assert cmd.exec_form is not None, "shell-form CMD needs /bin/sh, absent in distroless"


def test_the_entrypoint_runs_the_single_file(dockerfile: List[Instruction],
                                             tmp_path: Path) -> None:
    # The image's command line with this machine's python and a fresh bundle in their places.
    argv = only(dockerfile, "ENTRYPOINT").exec_form or []
    script = tmp_path / "probed.py"
    bundle.write_bundle(REPO / "probed", script)
    local = [sys.executable] + [str(script) if a == copied_file_path(dockerfile) else a
                                for a in argv[1:]]
    done = subprocess.run(local + ["--version"], cwd=str(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stdout


def test_expose_matches_the_default_probe_port(dockerfile: List[Instruction]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBED_")}
    done = subprocess.run([sys.executable, "-m", "probed", "--print-config", "--allow-no-checks"],
                          cwd=str(REPO),
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    default_port = json.loads(done.stdout)["addr"].rsplit(":", 1)[1]
    exposed = only(dockerfile, "EXPOSE").args.split()
    assert exposed == [default_port] or exposed == [default_port + "/tcp"], exposed
