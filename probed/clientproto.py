"""The HTTP/1.1 client's wire format, with no I/O: URLs, request bytes, response heads.

The client (client.py) moves bytes between a socket and these functions, the way the server
moves them through httpproto.py. Must never: put a header value (it may be a bearer token)
into an error message.
"""

import re
from typing import Dict, Mapping, Optional, Tuple

from .urlcodec import percent_encode

CLIENT_USER_AGENT = "probed"
CLIENT_MAX_LINE_BYTES = 8 * 1024  # the status line; one chunk-size line with its extensions
CLIENT_FETCH_ERROR_KINDS = (
    "refused", "timeout", "reset", "dns", "tls", "protocol", "too-large", "closed")
_CLIENT_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_CLIENT_LINE_END = re.compile(rb"\r?\n")
_CLIENT_STATUS_LINE = re.compile(rb"HTTP/1\.[0-9] ([0-9]{3})(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?\Z")
_CLIENT_SAFE_TARGET = "!#$%&'()*+,/:;=?@[]~"
_CLIENT_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?\Z",
                         re.S)
_CLIENT_OWNED_HEADERS = ("connection", "content-length", "transfer-encoding")


class FetchError(Exception):
    """A fetch that produced no HTTP response; `.kind` is one of CLIENT_FETCH_ERROR_KINDS."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __repr__(self) -> str:
        return "FetchError(%r, %r)" % (self.kind, str(self))


def split_url(url: str) -> Tuple[str, str, int, str]:
    """Split an http(s) URL into (scheme, host, port, target); ValueError otherwise.

    The host comes without IPv6 brackets; the target is percent-encoded and "/" at least.
    """
    match = _CLIENT_URL.match(url.strip())
    if match is None:
        raise ValueError("expected an http:// or https:// URL, got %r" % url.strip()[:80])
    given, netloc, path, query = match.groups()
    scheme = given.lower()
    if scheme not in ("http", "https"):
        raise ValueError("expected an http:// or https:// URL, got scheme %r" % given)
    if "@" in netloc:
        raise ValueError("credentials in the URL are not supported; send a header instead")
    host, port_text = _client_split_netloc(netloc)
    if not host:
        raise ValueError("expected a host after %s://" % scheme)
    if port_text:
        if not port_text.isdigit() or not port_text.isascii():
            raise ValueError("Port could not be cast to integer value as %r" % port_text)
        port = int(port_text)
        if port > 65535:
            raise ValueError("Port out of range 0-65535")
    else:
        port = 443 if scheme == "https" else 80
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    target = percent_encode(path or "/", _CLIENT_SAFE_TARGET)
    if query:
        target += "?" + percent_encode(query, _CLIENT_SAFE_TARGET)
    return scheme, host, port, target


def _client_split_netloc(netloc: str) -> Tuple[str, str]:
    """(host, port text) of `host:port` or `[v6]:port`, the host lower-case."""
    if netloc.startswith("["):
        host, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("Invalid IPv6 URL")
        return host.lower(), rest[1:]
    host, _, port = netloc.partition(":")
    if ":" in port:
        raise ValueError("Port could not be cast to integer value as %r" % port)
    return host.lower(), port


def _client_build_request(method: str, scheme: str, host: str, port: int, target: str,
                          headers: Optional[Mapping[str, str]], body: Optional[bytes]) -> bytes:
    """The request head and body as bytes; ValueError (naming the header, never its value)."""
    if not _CLIENT_TOKEN.match(method):
        raise ValueError("bad HTTP method %r" % method)
    authority = "[%s]" % host if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        authority += ":%d" % port
    fields = {"host": ("Host", authority), "user-agent": ("User-Agent", CLIENT_USER_AGENT),
              "accept": ("Accept", "*/*")}  # type: Dict[str, Tuple[str, str]]
    for name, value in (headers or {}).items():
        if not _CLIENT_TOKEN.match(name):
            raise ValueError("bad header name %r" % name)
        if "\r" in value or "\n" in value or "\x00" in value:
            raise ValueError("header %r has a CR, LF or NUL in its value" % name)
        if name.lower() not in _CLIENT_OWNED_HEADERS:  # framing is ours to decide
            fields[name.lower()] = (name, value)
    fields["connection"] = ("Connection", "close")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        fields["content-length"] = ("Content-Length", str(len(body or b"")))
    lines = ["%s %s HTTP/1.1" % (method, target)]
    lines.extend("%s: %s" % pair for pair in fields.values())
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("header values must be latin-1 text") from None
    return head + (body or b"")


def _client_parse_fields(block: bytes) -> Dict[str, str]:
    """Header fields as a dict: lower-case names, repeats joined by ", ", folds joined by SP."""
    fields = {}  # type: Dict[str, str]
    last = ""
    for raw in _CLIENT_LINE_END.split(block):
        line = raw.decode("latin-1")
        if line[:1] in (" ", "\t") and last:  # obsolete line folding (RFC 7230 3.2.4)
            fields[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not _CLIENT_TOKEN.match(name):
            raise FetchError("protocol", "bad header line %r" % line[:40])
        value = value.strip(" \t")
        fields[name] = fields[name] + ", " + value if name in fields else value
        last = name
    return fields


def _client_parse_status_line(line: bytes) -> Tuple[int, str]:
    """(status, reason) from `HTTP/1.x 200 OK`; the reason may be missing."""
    match = _CLIENT_STATUS_LINE.match(line)
    if not match:
        raise FetchError("protocol", "bad status line %r" % line[:32].decode("latin-1"))
    status = int(match.group(1))
    if status < 100:
        raise FetchError("protocol", "status code %d out of range" % status)
    return status, (match.group(2) or b"").decode("latin-1").strip()
