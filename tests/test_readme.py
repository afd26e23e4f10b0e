"""The README stays in step with the program: flags, check kinds, and the test command."""

import re
import subprocess
import sys

from conftest import REPO

from probed.checks import CHECK_KINDS

README = (REPO / "README.md").read_text(encoding="utf-8")


def help_flags() -> set:
    out = subprocess.run([sys.executable, "-m", "probed", "--help"], cwd=str(REPO),
                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    return set(re.findall(r"^\s+(--[a-z][a-z-]+)", out, re.MULTILINE)) - {"--help", "--version"}


def test_every_serve_flag_is_documented():
    missing = sorted(f for f in help_flags() if "`%s" % f not in README)
    assert not missing, "flags in --help but not in README.md: %s" % missing


def test_every_documented_flag_exists():
    section = README[README.index("## Flags"):README.index("## Migrating")]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    documented = set(re.findall(r"`(--[a-z][a-z-]+)", "\n".join(rows)))
    assert len(documented) > 10
    assert documented - help_flags() == set()


def test_every_check_kind_is_in_the_reference():
    section = README[README.index("## Checks"):README.index("## Flags")]
    missing = sorted(k for k in CHECK_KINDS if "| `%s` |" % k not in section)
    assert not missing, "check kinds without a README row: %s" % missing


def test_ci_runs_the_test_command_the_readme_prints():
    command = "bash tests/run.sh"
    assert "\n%s\n" % command in README
    assert command in (REPO / ".ci" / "run").read_text()
