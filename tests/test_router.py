"""Routing and reply rendering from cached verdicts: paths, methods, queries, aliases, cache."""

import io
import json
from typing import Tuple

import pytest
from fakes import Clock, FakeCheck, PodDriver

from probed.checks.base import Observation
from probed.eventlog import EventLog
from probed.httpproto import http_date, parse_request
from probed.router import Router


def make_router() -> Tuple[Router, PodDriver]:
    engine = PodDriver([FakeCheck("model", probes="live,ready,started"),
                        FakeCheck("queue", probes="ready", limit=10.0)])
    engine.record("model", Observation(True, "HTTP 200"), 0.001)
    engine.record("queue", Observation(True, "", value=4.0), 0.001)
    return Router(engine.pod, clock=engine.clock), engine


def get(router: Router, target: str, method: str = "GET", headers: str = "") -> Tuple[int, dict,
                                                                                      bytes]:
    raw = ("%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, target, headers)).encode()
    req, _ = parse_request(raw)
    reply = router.respond(req)
    wire = reply.before + http_date(0) + reply.after
    head, _, body = wire.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(l.split(": ", 1) for l in lines[1:])
    return int(lines[0].split()[1]), fields, body


def test_group_paths_and_aliases_when_passing():
    router, _ = make_router()
    assert get(router, "/livez")[::2] == (200, b"ok\n")
    assert get(router, "/readyz")[::2] == (200, b"ok\n")
    assert get(router, "/startupz")[::2] == (200, b"ok\n")
    assert get(router, "/healthz")[::2] == (200, b"ok\n")
    assert get(router, "/health")[::2] == (200, b"Healthy")
    assert get(router, "/ready")[::2] == (200, b"OK")


def test_failing_group_and_alias_bodies():
    router, engine = make_router()
    engine.record("queue", Observation(False, "queue 40 > 10"), 0)
    assert get(router, "/readyz")[::2] == (503, b"readyz failed: queue: queue 40 > 10\n")
    assert get(router, "/health")[::2] == (503, b"Unhealthy")
    assert get(router, "/ready")[0] == 503
    assert get(router, "/livez")[0] == 200, "queue is not a live check"


def test_plain_replies_are_cached_until_a_verdict_changes():
    router, engine = make_router()
    first = router.respond(parse_request(b"GET /readyz HTTP/1.1\r\n\r\n")[0])
    again = router.respond(parse_request(b"GET /readyz HTTP/1.1\r\n\r\n")[0])
    assert again is first
    engine.record("queue", Observation(False, "full"), 0)
    after = router.respond(parse_request(b"GET /readyz HTTP/1.1\r\n\r\n")[0])
    assert after is not first and after.status == 503


def test_head_has_headers_and_no_body():
    router, _ = make_router()
    status, fields, body = get(router, "/readyz", "HEAD")
    assert status == 200 and fields["Content-Length"] == "3" and body == b""


def test_verbose_is_kube_apiserver_style():
    router, engine = make_router()
    engine.record("queue", Observation(False, "queue 40 > 10"), 0)
    status, _, body = get(router, "/readyz?verbose")
    assert status == 503
    assert body.decode().splitlines() == [
        "[+]model ok: HTTP 200", "[-]queue failed: queue 40 > 10",
        "readyz check failed: queue: queue 40 > 10"]


def test_exclude_is_repeatable_and_reported():
    router, engine = make_router()
    engine.record("queue", Observation(False, "full"), 0)
    status, _, body = get(router, "/readyz?verbose&exclude=queue")
    assert status == 200 and "[+]queue excluded: ok" in body.decode()
    assert get(router, "/readyz?exclude=queue&exclude=model")[0] == 200


def test_json_by_query_and_by_accept_header():
    router, _ = make_router()
    for target, headers in (("/readyz?format=json", ""), ("/readyz", "Accept: application/json\r\n")):
        status, fields, body = get(router, target, headers=headers)
        doc = json.loads(body)
        assert status == 200 and fields["Content-Type"] == "application/json"
        assert doc["group"] == "ready" and doc["status"] == "pass" and doc["started"] is True
        queue = [c for c in doc["checks"] if c["name"] == "queue"][0]
        assert queue["value"] == 4.0 and queue["status"] == "pass" and queue["consecutive"] == 1
        assert set(queue) >= {"reason", "latency_seconds", "age_seconds", "since", "kind"}


def test_overrides_rejudge_without_touching_the_cache():
    router, engine = make_router()
    status, _, body = get(router, "/readyz?queue.limit=3&verbose")
    assert status == 503 and "[-]queue failed: value 4 over 3" in body.decode()
    assert get(router, "/readyz?queue.limit=5")[0] == 200
    assert engine.verdicts["ready"].ok


@pytest.mark.parametrize("target,needle", [
    ("/readyz?nope.limit=3", b"nope.limit"),
    ("/readyz?queue.bogus=3", b"no overridable key 'bogus'"),
    ("/readyz?queue.limit=abc", b"queue.limit='abc'"),
    ("/readyz?exclude=ghost", b"exclude=ghost"),
    ("/readyz?format=xml", b"format=xml"),
    ("/readyz?verbos", b"unknown query parameter"),
    ("/livez?queue.limit=3", b"queue.limit"),  # queue is not a live check
])
def test_bad_queries_are_400_naming_the_problem(target, needle):
    router, _ = make_router()
    status, fields, body = get(router, target)
    assert status == 400 and needle in body and fields["Connection"] == "close"


def test_single_check_paths():
    router, engine = make_router()
    engine.record("queue", Observation(False, "full"), 0)
    assert get(router, "/readyz/model")[::2] == (200, b"ok\n")
    assert get(router, "/readyz/queue")[0] == 503
    assert get(router, "/livez/model")[0] == 200
    assert get(router, "/livez/queue")[0] == 404, "queue is not in live"
    assert get(router, "/readyz/model?model.limit=1")[0] == 200


def test_unknown_path_is_404_and_wrong_method_405_with_allow():
    router, _ = make_router()
    assert get(router, "/nope")[0] == 404
    status, fields, _ = get(router, "/readyz", "POST")
    assert status == 405 and fields["Allow"] == "GET, HEAD"
    assert get(router, "/nope", "DELETE")[0] == 404


def test_index_lists_endpoints_and_checks():
    router, _ = make_router()
    status, _, body = get(router, "/")
    text = body.decode()
    assert status == 200 and "/readyz" in text and "queue" in text and "probes=ready" in text


def test_connection_close_and_http10_keep_alive_are_honoured():
    router, _ = make_router()
    close = router.respond(parse_request(b"GET /livez HTTP/1.1\r\nConnection: close\r\n\r\n")[0])
    assert close.close and b"Connection: close" in close.after
    keep10 = router.respond(parse_request(
        b"GET /livez HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")[0])
    assert not keep10.close and b"Connection: keep-alive" in keep10.after


def test_verbose_counts_the_phase_seconds_up_to_the_request():
    clock = Clock()
    engine = PodDriver([FakeCheck("model", probes="live,ready,started")], clock)
    engine.record("model", Observation(False, "connection refused"), 0.0)
    router = Router(engine.pod, clock=clock)
    clock.now += 5
    assert "starting for 5s (connection refused)" in get(router, "/startupz?verbose")[2].decode()
    clock.now += 307
    assert "for 312s" in get(router, "/startupz?verbose")[2].decode()


def test_probed_own_liveness_reports_a_stuck_poller_not_the_backend() -> None:
    clock = Clock()
    engine = PodDriver([FakeCheck("model", stale_after=4.0)], clock)
    router = Router(engine.pod, clock=clock)
    engine.record("model", Observation(False, "HTTP 503"), 0.0)
    assert get(router, "/probed/livez")[::2] == (200, b"ok\n")  # the backend fails; probed works
    clock.now += 9
    status, _, body = get(router, "/probed/livez")
    assert status == 503 and body == b"probed failed: poller of model stuck: no result for 9s " \
                                      b"(limit 8s)\n"
    assert b"/probed/livez" in get(router, "/")[2]


def test_a_path_echoed_in_a_404_is_short_and_escaped() -> None:
    router, _ = make_router()
    status, _, body = get(router, "/%1b%5b31m" + "x" * 500)
    assert status == 404
    assert b"\x1b" not in body and b"\\x1b[31m" in body and b"(409 more characters)" in body
