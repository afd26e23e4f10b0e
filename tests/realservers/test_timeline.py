"""The Timeline's judgement of a probe without a reply (no server needed): excused only when a
stall outside probed's verdicts covers it, with the evidence the Timeline recorded."""

from typing import List, Sequence, Tuple

import pytest

from .scenario import never
from .timeline import PROBE_TIMEOUT, STALL_EVIDENCE, Answer, Timeline


def record(answers: List[Answer], readings: List[Tuple[float, float]],
           stalls: Sequence[Tuple[float, float]] = ()) -> Timeline:
    tl = Timeline(port=1, pid=None)  # never started: the record is written by hand
    tl.answers.extend(answers)
    tl.stall_readings.extend(readings)
    tl.meter.stalls.extend(stalls)
    return tl


def no_reply(at: float, stalled_before: float) -> Answer:
    return Answer(at, "live", None, "no reply: TimeoutError('timed out')", stalled_before)


def test_a_missing_reply_with_no_stall_anywhere_is_a_failure() -> None:
    tl = record([no_reply(10.0, 5.0)], [(8.0, 5.0), (10.01, 5.2)])
    assert tl.stall_covering(tl.answers[0]) is None
    with pytest.raises(AssertionError, match="live failed 1 times"):
        never(tl, "live", 0.0, 20.0, "window")


def test_probed_or_the_machine_stalling_through_the_request_excuses_it() -> None:
    grown = 5.0 + STALL_EVIDENCE + 0.5
    tl = record([no_reply(10.0, 5.0)], [(8.0, 5.0), (10.01, grown)])
    assert tl.stall_covering(tl.answers[0]) == "probed or the machine stalled 1.5s"
    never(tl, "live", 0.0, 20.0, "window")
    assert tl.worst_lateness >= STALL_EVIDENCE + 0.5


def test_this_process_stalling_within_the_window_excuses_it() -> None:
    stall = (10.0 - PROBE_TIMEOUT + 0.2, 10.0 - PROBE_TIMEOUT + 0.2 + STALL_EVIDENCE)
    tl = record([no_reply(10.0, 5.0)], [(8.0, 5.0), (10.01, 5.0)], [stall])
    assert tl.stall_covering(tl.answers[0]) == "this process stalled %.1fs" % STALL_EVIDENCE
    # a stall that ended before the request went out explains nothing
    early = record([no_reply(10.0, 5.0)], [(8.0, 5.0), (10.01, 5.0)], [(1.0, 5.0)])
    assert early.stall_covering(early.answers[0]) is None


def test_a_503_is_never_excused() -> None:
    tl = record([Answer(10.0, "live", False, "vllm-health: HTTP 503", 5.0)],
                [(8.0, 5.0), (10.01, 50.0)])
    with pytest.raises(AssertionError, match="live failed 1 times"):
        never(tl, "live", 0.0, 20.0, "window")
