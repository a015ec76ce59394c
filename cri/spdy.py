"""A SPDY/3.1 frame codec: the framing kubelet and crictl speak to a CRI streaming server.

SPDY is what Kubernetes' streaming (exec, attach, port-forward) runs on between kubelet and the
runtime (moby/spdystream under k8s.io/apimachinery's httpstream/spdy). Python has no SPDY
library, maintained or not, so this one is written here, and kept to what that peer uses:

- control frames SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS and
  WINDOW_UPDATE; DATA frames with the FIN flag;
- header blocks compressed with zlib and the SPDY/3 dictionary, one compression context per
  direction for the whole connection (so a :class:`Codec` is one side of one connection).

The codec does no I/O: :meth:`Codec.feed` takes bytes as they come and returns the whole frames
they complete; :meth:`Codec.encode` makes the bytes of a frame. A malformed frame raises
:class:`ProtocolError` (the connection is then unusable: its compression context is lost).
Flow control is the session's business; spdystream sends no WINDOW_UPDATE and ignores them.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3

SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
CANCEL = 5
INTERNAL_ERROR = 6

MAX_FRAME = (1 << 24) - 1  # the 24-bit length field
MAX_HEADER_BLOCK = 1 << 20  # bytes of a decompressed header block we accept

_WORDS = (  # noqa: SIM905 (the spec's word list, compact)
    "options head post put delete trace accept accept-charset accept-encoding accept-language "
    "accept-ranges age allow authorization cache-control connection content-base content-encoding "
    "content-language content-length content-location content-md5 content-range content-type date "
    "etag expect expires from host if-match if-modified-since if-none-match if-range "
    "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
    "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
    "user-agent vary via warning www-authenticate method get status 200~OK version HTTP/1.1 url "
    "public set-cookie keep-alive origin"
).split()
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 "
    "Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 "
    "Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, "
    "Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,"
    "application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch"
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    out = bytearray()
    for word in _WORDS:
        part = word.replace("~", " ")  # "200 OK"
        out += struct.pack(">I", len(part)) + part.encode()
    return bytes(out + _TAIL.encode())


# The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): length-
# prefixed header names and values, then common text. zlib names it by its Adler-32 in each
# stream's header, so a wrong byte here fails every peer's inflate (the tests check the sum).
DICTIONARY = _dictionary()

Headers = dict[str, list[str]]


class ProtocolError(Exception):
    """A frame that is not SPDY/3 as the spec and spdystream make it."""


@dataclass
class SynStream:
    stream_id: int
    headers: Headers
    associated_to: int = 0
    priority: int = 0
    fin: bool = False
    unidirectional: bool = False


@dataclass
class SynReply:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass
class HeadersFrame:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass
class RstStream:
    stream_id: int
    status: int


@dataclass
class Settings:
    values: list[tuple[int, int, int]] = field(default_factory=list)  # (flags, id, value)
    clear: bool = False


@dataclass
class Ping:
    ping_id: int


@dataclass
class GoAway:
    last_good_stream_id: int
    status: int = 0


@dataclass
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass
class Data:
    stream_id: int
    data: bytes
    fin: bool = False


Frame = SynStream | SynReply | HeadersFrame | RstStream | Settings | Ping | GoAway | WindowUpdate | Data


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block: names lower-cased, several values joined by NUL."""
    out = bytearray(struct.pack(">I", len(headers)))
    for name, values in headers.items():
        n = name.lower().encode()
        v = b"\0".join(x.encode() for x in values)
        out += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
    return bytes(out)


def decode_header_block(block: bytes) -> Headers:
    """The name/value block; a lower-case name once only, each value split at NUL."""
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        pos = 4
        headers: Headers = {}
        for _ in range(count):
            (n,) = struct.unpack_from(">I", block, pos)
            name = block[pos + 4 : pos + 4 + n]
            pos += 4 + n
            if len(name) != n:
                raise ProtocolError("header block: a name runs past its end")
            (v,) = struct.unpack_from(">I", block, pos)
            value = block[pos + 4 : pos + 4 + v]
            pos += 4 + v
            if len(value) != v:
                raise ProtocolError("header block: a value runs past its end")
            key = name.decode("latin-1")
            if not key or key != key.lower():
                raise ProtocolError(f"header block: the name {key!r} is empty or not lower case")
            if key in headers:
                raise ProtocolError(f"header block: {key!r} given twice")
            headers[key] = value.decode("latin-1").split("\0")
    except struct.error:
        raise ProtocolError("header block: truncated") from None
    if pos != len(block):
        raise ProtocolError("header block: bytes after the last header")
    return headers


class Codec:
    """One side of a SPDY/3.1 connection: parse what the peer sends, encode what we send."""

    def __init__(self) -> None:
        self._deflate = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zdict=DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._buf = bytearray()

    # -- reading ---------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Frame]:
        """Take the next bytes from the peer; return the frames they complete, in order."""
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= 8:
            word, flags_len = struct.unpack_from(">II", self._buf, 0)
            length = flags_len & 0xFFFFFF
            if len(self._buf) < 8 + length:
                break
            flags = flags_len >> 24
            payload = bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            if word & 0x80000000:
                version = (word >> 16) & 0x7FFF
                if version != VERSION:
                    raise ProtocolError(f"SPDY version {version}, not {VERSION}")
                frames.append(self._control(word & 0xFFFF, flags, payload))
            else:
                stream_id = word & 0x7FFFFFFF
                if stream_id == 0:
                    raise ProtocolError("DATA frame on stream 0")
                frames.append(Data(stream_id, payload, bool(flags & FLAG_FIN)))
        return frames

    def _headers(self, block: bytes) -> Headers:
        try:
            raw = self._inflate.decompress(block, MAX_HEADER_BLOCK)
        except zlib.error as exc:
            raise ProtocolError(f"header block does not inflate: {exc}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError(f"header block larger than {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(raw)

    def _control(self, kind: int, flags: int, p: bytes) -> Frame:
        def need(n: int, exact: bool = True) -> None:
            if len(p) < n or (exact and len(p) != n):
                raise ProtocolError(f"control frame {kind}: {len(p)} bytes, wrong length")

        def stream(value: int) -> int:
            sid = value & 0x7FFFFFFF
            if sid == 0:
                raise ProtocolError(f"control frame {kind} on stream 0")
            return sid

        if kind == SYN_STREAM:
            need(10, exact=False)
            sid, assoc, prio = struct.unpack_from(">IIB", p, 0)
            return SynStream(
                stream(sid),
                self._headers(p[10:]),
                associated_to=assoc & 0x7FFFFFFF,
                priority=prio >> 5,
                fin=bool(flags & FLAG_FIN),
                unidirectional=bool(flags & FLAG_UNIDIRECTIONAL),
            )
        if kind in (SYN_REPLY, HEADERS):
            need(4, exact=False)
            (sid,) = struct.unpack_from(">I", p, 0)
            cls = SynReply if kind == SYN_REPLY else HeadersFrame
            return cls(stream(sid), self._headers(p[4:]), fin=bool(flags & FLAG_FIN))
        if kind == RST_STREAM:
            need(8)
            sid, status = struct.unpack(">II", p)
            if status == 0:
                raise ProtocolError("RST_STREAM with status 0")
            return RstStream(stream(sid), status)
        if kind == SETTINGS:
            need(4, exact=False)
            (count,) = struct.unpack_from(">I", p, 0)
            if len(p) != 4 + 8 * count:
                raise ProtocolError(f"SETTINGS of {count} entries in {len(p)} bytes")
            values = []
            for i in range(count):
                fid, value = struct.unpack_from(">II", p, 4 + 8 * i)
                values.append((fid >> 24, fid & 0xFFFFFF, value))
            return Settings(values, clear=bool(flags & 1))
        if kind == PING:
            need(4)
            return Ping(struct.unpack(">I", p)[0])
        if kind == GOAWAY:
            need(8)
            last, status = struct.unpack(">II", p)
            return GoAway(last & 0x7FFFFFFF, status)
        if kind == WINDOW_UPDATE:
            need(8)
            sid, delta = struct.unpack(">II", p)
            delta &= 0x7FFFFFFF
            if delta == 0:
                raise ProtocolError("WINDOW_UPDATE of 0")
            return WindowUpdate(sid & 0x7FFFFFFF, delta)
        raise ProtocolError(f"unknown control frame type {kind}")

    # -- writing ---------------------------------------------------------------------------
    def _compress(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._deflate.compress(block) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, frame: Frame) -> bytes:
        """The bytes of ``frame``, compressing header blocks in this side's context."""
        if isinstance(frame, Data):
            if not 0 < frame.stream_id <= 0x7FFFFFFF or len(frame.data) > MAX_FRAME:
                raise ValueError("DATA: bad stream id or too long")
            flags = FLAG_FIN if frame.fin else 0
            return struct.pack(">II", frame.stream_id, flags << 24 | len(frame.data)) + frame.data
        flags = 0
        if isinstance(frame, SynStream):
            kind = SYN_STREAM
            flags = (FLAG_FIN if frame.fin else 0) | (FLAG_UNIDIRECTIONAL if frame.unidirectional else 0)
            body = struct.pack(">IIBB", frame.stream_id, frame.associated_to, frame.priority << 5, 0)
            body += self._compress(frame.headers)
        elif isinstance(frame, (SynReply, HeadersFrame)):
            kind = SYN_REPLY if isinstance(frame, SynReply) else HEADERS
            flags = FLAG_FIN if frame.fin else 0
            body = struct.pack(">I", frame.stream_id) + self._compress(frame.headers)
        elif isinstance(frame, RstStream):
            kind, body = RST_STREAM, struct.pack(">II", frame.stream_id, frame.status)
        elif isinstance(frame, Settings):
            kind, flags = SETTINGS, 1 if frame.clear else 0
            body = struct.pack(">I", len(frame.values))
            body += b"".join(struct.pack(">II", f << 24 | i, v) for f, i, v in frame.values)
        elif isinstance(frame, Ping):
            kind, body = PING, struct.pack(">I", frame.ping_id)
        elif isinstance(frame, GoAway):
            kind, body = GOAWAY, struct.pack(">II", frame.last_good_stream_id, frame.status)
        else:
            kind, body = WINDOW_UPDATE, struct.pack(">II", frame.stream_id, frame.delta)
        return struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(body)) + body
