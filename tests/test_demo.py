"""`probed demo`: each simulator state gets the verdicts DESIGN §3 promises, as printed."""

import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow

EXPECTED = [  # (state, livez, readyz, startupz, a word the failing reason must contain)
    ("loading", 200, 503, 503, "loading for"),
    ("ready", 200, 200, 200, ""),
    ("busy", 200, 200, 200, ""),
    ("saturated", 200, 503, 200, "num_requests_waiting"),
    ("sleeping", 200, 503, 200, "sleeping"),
    ("ready", 200, 200, 200, ""),
    ("stalled", 503, 503, 200, "stalled"),
    ("dead", 503, 503, 200, "HTTP 503"),
    ("exited", 200, 503, 503, "loading for"),  # a restart: startup probed again, live in grace
]


def test_demo_walks_every_state_with_the_right_verdicts():
    done = subprocess.run([sys.executable, "-m", "probed", "demo"], cwd=str(REPO),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=150)
    assert done.returncode == 0, done.stdout[-2000:]
    stages = re.findall(r"^== (\w+):.*\n(?:.*\n)*?   now: (.*)$", done.stdout, re.MULTILINE)
    assert [s for s, _ in stages] == [e[0] for e in EXPECTED], done.stdout[-3000:]
    for (state, line), (_, live, ready, started, word) in zip(stages, EXPECTED):
        got = tuple(int(c) for c in re.findall(r"(?:livez|readyz|startupz) (\d{3})", line))
        assert got == (live, ready, started), "%s: %s" % (state, line)
        assert word in line, "%s: %s" % (state, line)
    assert "curl -s 'http://127.0.0.1:" in done.stdout


def test_the_single_file_says_where_the_demo_is():
    done = subprocess.run([sys.executable, "-I", "-S", str(REPO / "probed.py"), "demo"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)
    assert done.returncode == 2 and "python3 -m probed demo" in done.stderr
