"""--restart-pod-on: probed exits with the chosen code when a group or check has failed long
enough, so the pod's restartPolicyRules (RestartAllContainers) restart it in place (issue 19).
A real daemon, a check toggled by a file; every wait bounded."""

import time
from pathlib import Path
from typing import Any

import pytest
from backends import kubelet_probe, wait_status

from probed.cli import main


def toggled(flag: Path) -> str:
    return ("exec name=engine probes=live,ready,started interval=200ms timeout=1s cmd='test -e %s'"
            % flag)


def test_live_failing_long_enough_exits_with_the_rules_code(start_daemon: Any,
                                                            tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    flag.touch()
    daemon = start_daemon(["--check", toggled(flag), "--restart-pod-on", "live=75",
                           "--restart-pod-after", "600ms"])
    wait_status(daemon.port, "/livez", 200)
    wait_status(daemon.port, "/startupz", 200)
    flag.unlink()
    t0 = time.monotonic()
    code = daemon.proc.wait(timeout=15)
    assert code == 75
    assert time.monotonic() - t0 >= 0.6, "not before --restart-pod-after"
    log = daemon.stderr_text()
    assert 'level=warn msg="restarting the pod" rule="live=75" failing_for=600ms' in log
    assert "engine: exit 1" in log


def test_a_failure_shorter_than_the_wait_restarts_nothing(start_daemon: Any,
                                                          tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    flag.touch()
    daemon = start_daemon(["--check", toggled(flag), "--restart-pod-on", "live=75",
                           "--restart-pod-after", "3s"])
    wait_status(daemon.port, "/startupz", 200)
    flag.unlink()
    wait_status(daemon.port, "/livez", 503)
    flag.touch()
    wait_status(daemon.port, "/livez", 200)
    time.sleep(3.5)  # past the wait from the failure: it was disarmed when live passed again
    assert daemon.proc.poll() is None
    assert kubelet_probe(daemon.port, "/livez").status == 200


def test_a_rule_naming_nothing_is_a_config_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["--check", "tcp addr=127.0.0.1:9 name=port", "--restart-pod-on", "lvie=75",
                 "--addr", "127.0.0.1:0"]) == 2
    err = capsys.readouterr().err
    assert "--restart-pod-on lvie=75: 'lvie' is neither a group" in err and "port" in err
