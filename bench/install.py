"""What the peers need, whether it is here, and (with --setup) installing what is missing.

Debian packages: nginx, apache2-utils (ab), golang-go, wrk (apt-get, as root). Python peers: a venv
(default /tmp/probed-bench-venv, from the same python3 that runs the bench) with fastapi,
uvicorn[standard] (httptools + uvloop) and aiohttp from PyPI. A failed install is recorded with
its exact error and that peer is left out; nothing is faked.
"""

import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional

INSTALL_TIMEOUT = 420.0
DEBIAN_PACKAGES = {"nginx": "nginx", "ab": "apache2-utils", "go": "golang-go", "wrk": "wrk"}
PIP_PACKAGES = ["fastapi", "uvicorn[standard]", "aiohttp"]
VENV_IMPORTS = {"fastapi": "import fastapi, uvicorn", "aiohttp": "import aiohttp"}
VERSION_CODE = ("import importlib.metadata as m\nfor p in ('fastapi','starlette','uvicorn',"
                "'uvloop','httptools','aiohttp'):\n try: print(p, m.version(p))\n"
                " except Exception: pass")


def _tail(text: str, lines: int = 6) -> str:
    kept = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("WARNING")]
    return " | ".join(kept[-lines:])


def _install_debian(missing: List[str], notes: List[str]) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        notes.append("cannot apt-get install %s: not root or no apt-get" % " ".join(missing))
        return
    for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q"] + missing):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if done.returncode != 0:
            notes.append("`%s` failed (exit %d): %s" % (
                " ".join(argv), done.returncode, _tail(done.stderr or done.stdout)))
            return


def _venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def _install_venv(venv: str, notes: List[str]) -> None:
    steps = []
    if not os.path.exists(_venv_python(venv)):
        steps.append([sys.executable, "-m", "venv", venv])
    steps.append([_venv_python(venv), "-m", "pip", "install", "-q"] + PIP_PACKAGES)
    for argv in steps:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            notes.append("`%s` failed: %s" % (" ".join(argv), exc))
            return
        if done.returncode != 0:
            notes.append("`%s` failed (exit %d): %s" % (
                " ".join(argv), done.returncode, _tail(done.stderr or done.stdout)))
            return


def venv_has(venv: str, what: str) -> Optional[str]:
    """None when the venv imports the modules of `what`, else the error it printed."""
    if not os.path.exists(_venv_python(venv)):
        return "no venv at %s" % venv
    done = subprocess.run([_venv_python(venv), "-c", VENV_IMPORTS[what]], capture_output=True,
                          text=True, timeout=60)
    return None if done.returncode == 0 else _tail(done.stderr, 1)


def ensure(venv: str, setup: bool, notes: List[str]) -> Dict[str, Optional[str]]:
    """Tool -> None when usable, else why not. Installs what is missing when setup is true."""
    missing = [pkg for tool, pkg in DEBIAN_PACKAGES.items() if not shutil.which(tool)]
    if missing and setup:
        _install_debian(missing, notes)
    if setup and any(venv_has(venv, w) for w in VENV_IMPORTS):
        _install_venv(venv, notes)
    hint = "" if setup else " (python3 bench/run.py --setup installs it)"
    status: Dict[str, Optional[str]] = {}
    for tool, pkg in DEBIAN_PACKAGES.items():
        status[tool] = None if shutil.which(tool) else "`%s` not found: Debian package %s is " \
            "not installed%s" % (tool, pkg, hint)
    for what in VENV_IMPORTS:
        error = venv_has(venv, what)
        status[what] = None if error is None else "%s venv %s: %s%s" % (what, venv, error, hint)
    return status


def versions(venv: str) -> Dict[str, str]:
    """Versions of every peer's software that is present."""
    out: Dict[str, str] = {"python": sys.version.split()[0]}
    probes = {"nginx": (["nginx", "-v"], r"nginx/(\S+)"), "go": (["go", "version"], r"go(\d\S*)"),
              "ab": (["ab", "-V"], r"Version (\S+)"), "wrk": (["wrk", "-v"], r"wrk (\S+)")}
    for tool, (argv, pattern) in probes.items():
        if shutil.which(tool):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            match = re.search(pattern, done.stdout + done.stderr)
            out[tool] = match.group(1) if match else (done.stdout + done.stderr).strip()[:60]
    if os.path.exists(_venv_python(venv)):
        done = subprocess.run([_venv_python(venv), "-c", VERSION_CODE], capture_output=True,
                              text=True, timeout=60)
        for line in done.stdout.splitlines():
            name, _, version = line.partition(" ")
            out[name] = version
    return out
