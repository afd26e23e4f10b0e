"""The sans-I/O HTTP/1.1 parser and response builder, over byte strings only."""

import email.utils
import http.client
import io

import pytest

from probed.httpproto import (
    CONN_CLOSE,
    CONN_KEEP,
    CONN_KEEP_10,
    MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_HEADER_FIELDS,
    MAX_REQUEST_LINE,
    DateCache,
    HTTPError,
    RequestParser,
    build_error_response,
    build_response,
    connection_mode,
    http_date,
    parse_request,
)

KUBELET = (b"GET /readyz HTTP/1.1\r\nHost: 10.0.0.1:8080\r\nUser-Agent: kube-probe/1.31\r\n"
           b"Accept: */*\r\nConnection: close\r\n\r\n")


def parse_one(data: bytes, **kw):
    req, used = parse_request(data, **kw)
    assert req is not None, "expected a complete request"
    return req, used


def status_of(data: bytes, **kw) -> int:
    with pytest.raises(HTTPError) as info:
        parse_request(data, **kw)
    return info.value.status


def test_kubelet_request():
    req, used = parse_one(KUBELET)
    assert used == len(KUBELET)
    assert (req.method, req.path, req.query, req.version) == ("GET", "/readyz", "", "1.1")
    assert req.headers["user-agent"] == "kube-probe/1.31"
    assert req.keep_alive is False
    assert connection_mode(req) == CONN_CLOSE


def test_incomplete_needs_more_bytes():
    for cut in range(len(KUBELET)):
        assert parse_request(KUBELET[:cut]) == (None, 0)


def test_header_names_are_case_insensitive_and_values_trimmed():
    req, _ = parse_one(b"GET / HTTP/1.1\r\nHOST: a\r\nX-Thing:   v  \r\nACCEPT: application/json"
                       b"\r\n\r\n")
    assert req.headers == {"host": "a", "x-thing": "v", "accept": "application/json"}


def test_repeated_headers_are_joined():
    req, _ = parse_one(b"GET / HTTP/1.1\r\nAccept: a\r\nAccept: b\r\n\r\n")
    assert req.headers["accept"] == "a, b"


@pytest.mark.parametrize("version,connection,keep,mode", [
    (b"1.1", b"", True, CONN_KEEP),
    (b"1.1", b"close", False, CONN_CLOSE),
    (b"1.1", b"Keep-Alive, Close", False, CONN_CLOSE),
    (b"1.0", b"", False, CONN_CLOSE),
    (b"1.0", b"keep-alive", True, CONN_KEEP_10),
])
def test_keep_alive_rules(version, connection, keep, mode):
    head = b"GET / HTTP/" + version + b"\r\n"
    if connection:
        head += b"Connection: " + connection + b"\r\n"
    req, _ = parse_one(head + b"\r\n")
    assert req.keep_alive is keep
    assert connection_mode(req) == mode


def test_pipelined_requests_parse_one_at_a_time():
    data = (b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /readyz?verbose HTTP/1.1\r\nHost: x\r\n\r\nGET /sta")
    first, used = parse_one(data)
    second, used2 = parse_one(data[used:])
    assert (first.path, second.method, second.path, second.query) == (
        "/livez", "HEAD", "/readyz", "verbose")
    assert parse_request(data[used + used2:]) == (None, 0)


def test_leading_empty_lines_and_bare_lf_are_tolerated():
    req, used = parse_one(b"\r\n\r\nGET /livez HTTP/1.1\nHost: x\n\n")
    assert req.path == "/livez"
    assert used == len(b"\r\n\r\nGET /livez HTTP/1.1\nHost: x\n\n")


def test_content_length_body():
    data = b"POST /drain HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello!"
    req, used = parse_one(data)
    assert req.body == b"hello" and used == len(data) - 1
    assert parse_request(data[:-3]) == (None, 0)


def test_percent_decoding_of_path_and_query():
    req, _ = parse_one(b"GET /readyz/my%2Dcheck?exclude=a%20b&verbose HTTP/1.1\r\n\r\n")
    assert req.path == "/readyz/my-check"
    assert req.query_pairs() == [("exclude", "a b"), ("verbose", "")]


def test_absolute_form_target():
    req, _ = parse_one(b"GET http://10.0.0.1:8080/livez?verbose HTTP/1.1\r\n\r\n")
    assert (req.path, req.query) == ("/livez", "verbose")


@pytest.mark.parametrize("data", [
    b"GET /readyz\r\n\r\n",  # HTTP/0.9 style
    b"GET  /readyz HTTP/1.1\r\n\r\n",  # double space
    b"GET /readyz HTTP/1.1 extra\r\n\r\n",
    b"G(T / HTTP/1.1\r\n\r\n",
    b"GET readyz HTTP/1.1\r\n\r\n",
    b"GET /a\x01b HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.x\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nName : v\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"GET /%ff HTTP/1.1\r\n\r\n",
])
def test_malformed_requests_are_400(data):
    assert status_of(data) == 400


def test_invalid_utf8_query_is_400_when_read():
    req, _ = parse_one(b"GET /readyz?exclude=%ff HTTP/1.1\r\n\r\n")
    with pytest.raises(HTTPError) as info:
        req.query_pairs()
    assert info.value.status == 400


def test_http2_preface_and_other_majors_are_505():
    assert status_of(b"GET / HTTP/2.0\r\n\r\n") == 505


def test_chunked_request_bodies_are_501():
    assert status_of(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 501


def test_request_line_limit_is_414_even_before_the_line_ends():
    long_target = b"/" + b"a" * MAX_REQUEST_LINE
    assert status_of(b"GET " + long_target + b" HTTP/1.1\r\n\r\n") == 414
    assert status_of(b"GET " + long_target) == 414  # no newline yet, already too long
    just_fits = b"GET /" + b"a" * (MAX_REQUEST_LINE - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    assert len(just_fits) == MAX_REQUEST_LINE
    parse_one(just_fits + b"\r\n\r\n")


def test_header_block_limit_is_431():
    big = b"X-Big: " + b"v" * (MAX_HEADER_BYTES) + b"\r\n"
    assert status_of(b"GET / HTTP/1.1\r\n" + big + b"\r\n") == 431
    assert status_of(b"GET / HTTP/1.1\r\n" + big) == 431  # still streaming in


def test_header_count_limit_is_431():
    fields = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADER_FIELDS))
    parse_one(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")
    assert status_of(b"GET / HTTP/1.1\r\n" + fields + b"X-One-More: v\r\n\r\n") == 431


def test_body_limit_is_413_before_the_body_arrives():
    assert status_of(b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1)) == 413
    assert status_of(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", max_body=10) == 413


def read_with_stdlib(wire: bytes, method: str = "GET") -> http.client.HTTPResponse:
    """Parse our bytes with http.client: a real, independent HTTP implementation."""

    class FakeSock:
        def makefile(self, mode: str) -> io.BytesIO:
            return io.BytesIO(wire)

    resp = http.client.HTTPResponse(FakeSock(), method=method)  # type: ignore[arg-type]
    resp.begin()
    return resp


def test_responses_parse_with_the_stdlib_client():
    prepared = build_response(503, b"readyz failed: x\n", mode=CONN_CLOSE)
    resp = read_with_stdlib(prepared.before + http_date(0) + prepared.after)
    assert resp.status == 503 and resp.reason == "Service Unavailable"
    assert resp.read() == b"readyz failed: x\n"
    assert resp.getheader("Connection") == "close"
    assert resp.getheader("Date") == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert resp.getheader("Cache-Control") == "no-store"
    assert prepared.close is True


def test_head_response_keeps_content_length_and_drops_body():
    prepared = build_response(200, b"ok\n", head=True, mode=CONN_KEEP)
    wire = prepared.before + http_date(0) + prepared.after
    assert wire.endswith(b"\r\n\r\n")
    resp = read_with_stdlib(wire, method="HEAD")
    assert resp.getheader("Content-Length") == "3" and resp.read() == b""
    assert prepared.close is False


def test_http10_keep_alive_is_confirmed():
    prepared = build_response(200, b"ok\n", mode=CONN_KEEP_10)
    assert b"Connection: keep-alive\r\n" in prepared.after


def test_error_responses_close_and_carry_allow():
    prepared = build_error_response(HTTPError(405, "method POST not allowed", allow="GET, HEAD"))
    resp = read_with_stdlib(prepared.before + http_date(0) + prepared.after)
    assert resp.status == 405 and resp.getheader("Allow") == "GET, HEAD"
    assert resp.getheader("Connection") == "close" and prepared.close
    assert b"method POST not allowed" in resp.read()


def test_http_date_is_locale_independent_imf_fixdate():
    for when in (0, 951782400, 1795000000, 4102444799):  # epoch, a leap day, now, 2099
        assert http_date(when) == email.utils.formatdate(when, usegmt=True).encode()


# --- pipelines: parsing from an offset, bounded work ---------------------------------------------

class CountingBytes(bytes):
    """bytes that count how many bytes the parser's searches and slices go through."""

    scanned = 0

    def find(self, sub, start=0, end=None):  # type: ignore[override]
        stop = len(self) if end is None else min(end, len(self))
        found = bytes.find(self, sub, start, stop)  # a search stops where it finds
        CountingBytes.scanned += max(0, (found + len(sub) if found >= 0 else stop) - start)
        return found

    def lstrip(self, chars=None):  # type: ignore[override]
        CountingBytes.scanned += len(self)
        return bytes.lstrip(self, chars)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, slice):
            CountingBytes.scanned += len(range(*key.indices(len(self))))
        return bytes.__getitem__(self, key)


def test_parsing_the_first_request_of_a_long_pipeline_reads_only_that_request():
    one = b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"
    rest = one * 8000  # ~256 KiB more behind it
    for first in (KUBELET, b"\r\n" + KUBELET, b"GET / HTTP/1.1\nHost: x\n\n"):
        CountingBytes.scanned = 0
        req, used = parse_one(CountingBytes(first + rest))
        assert used == len(first)
        # (a bare-LF head may look as far as the next CRLF head's end, no further)
        assert CountingBytes.scanned < 4 * (len(first) + len(one)), "it went through the rest"


def test_pipelined_requests_parse_from_offsets():
    data = KUBELET + b"\r\nHEAD /livez HTTP/1.1\r\nHost: x\r\n\r\n" + KUBELET[:20]
    first, end = parse_request(data)
    second, end2 = parse_request(data, start=end)
    assert (first.path, second.method, second.path) == ("/readyz", "HEAD", "/livez")
    assert end == len(KUBELET) and end2 == len(data) - 20
    assert parse_request(data, start=end2) == (None, end2)  # nothing consumed
    assert parse_request(data, start=len(data)) == (None, len(data))
    with pytest.raises(HTTPError) as info:
        parse_request(b"GET / HTTP/1.1\r\n\r\n" + b"\r\n" * 100, start=18)
    assert info.value.status == 400


def test_a_head_asking_100_continue_is_a_request_before_its_body():
    head = b"POST /drain HTTP/1.1\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    req, end = parse_one(head + b"abc")
    assert (req.method, req.body, req.body_pending, end) == ("POST", b"", 4997, len(head) + 3)
    assert req.keep_alive is False and connection_mode(req) == CONN_CLOSE  # the body is unread
    whole, _ = parse_one(head + b"x" * 5000)  # the body is all here: a normal request
    assert whole.body == b"x" * 5000 and whole.body_pending == 0 and whole.keep_alive
    http10 = head.replace(b"HTTP/1.1", b"HTTP/1.0")  # HTTP/1.0 has no 100-continue
    assert parse_request(http10) == (None, 0)
    assert parse_request(head.replace(b"100-continue", b"something")) == (None, 0)


def test_the_request_parser_remembers_heads_without_bodies_only():
    parser = RequestParser()
    first, end = parser.parse(KUBELET)
    again, end2 = parser.parse(b"xx" + KUBELET, 2)
    assert again is first and (end, end2) == (len(KUBELET), len(KUBELET) + 2)
    posted = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab"
    one, _ = parser.parse(posted)
    two, _ = parser.parse(posted)
    assert one is not two and one.body == two.body == b"ab"
    pipeline = KUBELET + b"GET /livez HTTP/1.1\nHost: x\n\nGET / HTTP/1.1\r\n\r\n"
    pos = 0
    while pos < len(pipeline):  # the same answers as the plain parser, request by request
        mine, mine_end = parser.parse(pipeline, pos)
        plain, plain_end = parse_request(pipeline, start=pos)
        assert mine_end == plain_end and mine.path == plain.path
        pos = plain_end
    for i in range(200):  # a client sending ever-new heads keeps the memory bounded
        parser.parse(b"GET /%d HTTP/1.1\r\n\r\n" % i)
    assert len(parser._heads) <= 32


def test_wire_bytes_are_kept_per_date():
    dates = DateCache()
    today = dates.at(86400.2)
    assert today is dates.at(86400.9) and today == http_date(86400)
    prepared = build_response(200, b"ok\n")
    wire = prepared.wire(today)
    assert wire == prepared.before + today + prepared.after
    assert prepared.wire(today) is wire
    assert prepared.wire(dates.at(86401)) == prepared.before + http_date(86401) + prepared.after
