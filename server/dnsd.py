"""A small authoritative DNS server: `vsl test` answers a transcript's DNS from zone
files with it, and the test suite uses it as its real DNS server.

Serves zone files, or records given in memory (:meth:`DnsServer.from_records`),
over UDP and TCP on one port from a background thread, with fault injection
(SERVFAIL, silence, forced truncation) and a log of queries.
Run by hand with ``python -m vsl.server.dnsd ZONEFILE... --port 5353``.

It acts as the root of a world that holds only its zones: a name outside every
zone does not exist (NXDOMAIN, with a made-up root SOA), so an unknown domain or a
missing PTR needs no zone of its own. A zone file needs ``$ORIGIN`` and TTLs
(``$TTL``); its SOA and NS are made up when it has none.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.node
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tokenizer
import dns.zone
import dns.zonefile

UDP_LIMIT = 512  # answer size limit for UDP queries without EDNS
TCP_LIMIT = 65535
MAX_CNAME_CHAIN = 8
BIND_ATTEMPTS = 5
RECORD_TTL = 300  # of records given in memory
APEX = {dns.rdatatype.SOA: "ns hostmaster 1 3600 600 86400 60",  # made up when missing
        dns.rdatatype.NS: "ns"}
IN = dns.rdataclass.IN
STRING_TYPES = (dns.rdatatype.TXT, dns.rdatatype.SPF)  # rdata made of character-strings


class ZoneError(ValueError):
    """A zone file that cannot be served; the message says file[:line] and why."""


def load_zone(path: Path) -> dns.zone.Zone:
    """Read a zone file; SOA and NS are made up when its origin has none."""
    try:
        zone = _read_zone(path)
    except OSError as err:
        raise ZoneError(f"{err.filename or path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ZoneError(f"{path}: cannot read: not UTF-8 text") from None
    except dns.zonefile.UnknownOrigin:
        raise ZoneError(f"{path}: no $ORIGIN line: write one, such as "
                        "'$ORIGIN example.test.', before the records") from None
    except dns.exception.DNSException as err:
        raise ZoneError(_located(path, str(err))) from None
    _fill_apex(zone)
    return zone


def _read_zone(path: Path) -> dns.zone.Zone:
    """dns.zone.from_file without its SOA/NS check, whose errors name the line of the
    record at fault."""
    zone = dns.zone.Zone(None, relativize=False)
    with path.open(encoding="utf-8") as file, zone.writer(replacement=True) as txn:
        dns.zonefile.Reader(_LineTokenizer(file, str(path)), IN, txn,
                            allow_include=True).read()
    return zone


class _LineTokenizer(dns.tokenizer.Tokenizer):
    """Says where the last token was read: dnspython's tokenizer names the next line
    when a record ends too early (its error comes after the newline)."""

    token_line = 1

    def get(self, want_leading: bool = False, want_comment: bool = False):
        line = self.line_number  # read past the token, line_number may count its newline
        fresh = self.ungotten_token is None  # an ungotten token keeps its line
        token = super().get(want_leading, want_comment)
        if fresh and not (token.is_eol_or_eof() or token.is_whitespace() or token.is_comment()):
            self.token_line = line
        return token

    def where(self) -> tuple[str, int]:
        return self.filename, self.token_line


def _located(path: Path, message: str) -> str:
    """A zone file error as file:line: text, with a hint for the common one."""
    if not message.startswith(str(path)):
        message = f"{path}: {message}"
    if "default TTL" in message:
        message += " (write '$TTL 300' at the top, or a TTL on each record)"
    return message


def _fill_apex(zone: dns.zone.Zone) -> None:
    """Give the zone's origin an SOA and an NS record if it has none."""
    for rdtype, text in APEX.items():
        rdataset = zone.find_rdataset(zone.origin, rdtype, create=True)
        if not rdataset:
            rdataset.add(dns.rdata.from_text(IN, rdtype, text, origin=zone.origin,
                                             relativize=False), RECORD_TTL)


class _Zone:
    """A zone and every name that exists in it."""

    def __init__(self, data: dns.zone.Zone) -> None:
        self.data = data
        self.origin = self.data.origin
        # Owner names plus their ancestors, so empty non-terminals exist too.
        self.names = {
            name for owner in self.data.nodes for name in _up_to(owner, self.origin)
        }

    @property
    def soa(self) -> dns.rrset.RRset:
        return self.data.find_rrset(self.origin, dns.rdatatype.SOA)

    def find(self, qname: dns.name.Name) -> dns.node.Node | None:
        """The node answering qname, wildcards applied; None if it does not exist."""
        if qname in self.names:
            return self.data.get_node(qname) or dns.node.Node()
        encloser = qname.parent()
        while encloser not in self.names:
            encloser = encloser.parent()
        return self.data.get_node(dns.name.from_text("*", encloser))


def _root_zone(records: Mapping[str, Iterable[tuple[str, object]]]) -> dns.zone.Zone:
    """A zone at the root holding records (see DnsServer.from_records)."""
    zone = dns.zone.Zone(dns.name.root, relativize=False)
    _fill_apex(zone)
    for name, entries in records.items():
        owner = dns.name.from_text(name)
        for rdtype_text, value in entries:
            rdtype = dns.rdatatype.from_text(rdtype_text)
            zone.find_rdataset(owner, rdtype, create=True).add(
                _rdata(rdtype, value), RECORD_TTL
            )
    return zone


def _rdata(rdtype: dns.rdatatype.RdataType, value: object) -> dns.rdata.Rdata:
    """One record: TXT and SPF from their strings, any other type from zone text."""
    if rdtype in STRING_TYPES:
        strings = [value] if isinstance(value, (str, bytes)) else list(value)
        return dns.rdata.get_rdata_class(IN, rdtype)(IN, rdtype, strings)
    return dns.rdata.from_text(
        IN, rdtype, str(value), origin=dns.name.root, relativize=False
    )


def _up_to(name: dns.name.Name, origin: dns.name.Name) -> Iterator[dns.name.Name]:
    """name and its ancestors, ending with origin."""
    while name != origin:
        yield name
        name = name.parent()
    yield origin


class _HangUp(Exception):
    """Close the TCP connection instead of answering."""


class DnsServer:
    """Authoritative server for zone files, on one UDP+TCP port, in a thread."""

    def __init__(
        self, zone_files: Iterable[Path], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        """Raises ZoneError for a zone file that cannot be served."""
        self._zones = [_Zone(load_zone(path)) for path in zone_files]
        self._outside = _Zone(_root_zone({}))  # answers names outside every zone
        self.host = host
        self.port = port
        self.queries: list[tuple[str, str, str]] = []  # (qname, qtype, transport)
        self._servfail: set[dns.name.Name] = set()
        self._drop: set[tuple[dns.name.Name, dns.rdatatype.RdataType | None]] = set()
        self._truncate: set[dns.name.Name] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    @classmethod
    def from_records(
        cls,
        records: Mapping[str, Iterable[tuple[str, object]]],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> DnsServer:
        """A server for records held in memory: ``{name: [(type, value), ...]}``.

        Every name is absolute. A value is zone-file text (``"10 mx.example.com"``),
        except for TXT and SPF: one string or a list of strings (str is UTF-8 encoded).
        One root zone holds them all: other names are NXDOMAIN, or empty
        non-terminals above a listed name.
        """
        server = cls([], host, port)
        server._zones.append(_Zone(_root_zone(records)))
        return server

    # -- fault injection -------------------------------------------------

    def servfail(self, name: str) -> None:
        """Answer every query for name with SERVFAIL."""
        self._servfail.add(dns.name.from_text(name))

    def drop(self, name: str, rdtype: str | None = None) -> None:
        """Never answer queries for name, or only those of rdtype: clients time out."""
        only = None if rdtype is None else dns.rdatatype.from_text(rdtype)
        self._drop.add((dns.name.from_text(name), only))

    def truncate_always(self, name: str) -> None:
        """Answer name with TC over UDP and hang up on it over TCP."""
        self._truncate.add(dns.name.from_text(name))

    def reset(self) -> None:
        """Clear all faults and the query log."""
        for names in (self._servfail, self._drop, self._truncate):
            names.clear()
        self.queries.clear()

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Bind UDP and TCP on one port and serve from a background thread."""
        udp, tcp = _bind(self.host, self.port)
        self.port = udp.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"dnsd-{self.port}", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(udp, tcp), self._loop).result()

    def stop(self) -> None:
        """Close the sockets and connections and join the thread."""
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> DnsServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self._handle), sock=udp
        )
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)

    async def _shutdown(self) -> None:
        self._udp.close()
        self._tcp.close()
        for writer in self._connections:
            writer.close()  # the handler sees EOF and returns
        await asyncio.gather(*asyncio.all_tasks() - {asyncio.current_task()})

    async def _serve_tcp(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answer length-prefixed queries on one connection until it closes."""
        self._connections.add(writer)
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                answer = self._handle(await reader.readexactly(size), "tcp")
                if answer is not None:
                    writer.write(len(answer).to_bytes(2, "big") + answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, _HangUp):
            pass
        finally:
            self._connections.discard(writer)
            writer.close()

    # -- answering -------------------------------------------------------

    def _handle(self, wire: bytes, transport: str) -> bytes | None:
        """The wire answer to one packet, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _format_error(wire)
        if query.flags & dns.flags.QR:
            return None
        response = self._respond(query, transport)
        if response is None:
            return None
        if transport == "tcp":
            limit = TCP_LIMIT
        else:
            limit = response.request_payload or UDP_LIMIT  # EDNS payload, else 512
        return response.to_wire(max_size=limit, prefer_truncation=True)

    def _respond(
        self, query: dns.message.Message, transport: str
    ) -> dns.message.Message | None:
        """The response to a parsed query after faults, or None to stay silent."""
        response = dns.message.make_response(query)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name = question.name
        self.queries.append(
            (name.to_text(), dns.rdatatype.to_text(question.rdtype), transport)
        )
        if (name, None) in self._drop or (name, question.rdtype) in self._drop:
            return None
        if name in self._truncate:
            if transport == "tcp":
                raise _HangUp
            response.flags |= dns.flags.TC
        elif name in self._servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        else:
            self._answer(question, response)
        return response

    def _answer(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        """Fill response from the zones, chasing CNAMEs through served zones."""
        name = question.name
        zone = self._zone_for(name) or self._outside
        if question.rdclass != IN:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        for _ in range(MAX_CNAME_CHAIN):
            node = zone.find(name)
            if node is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                break
            wanted = node.get_rdataset(IN, question.rdtype)
            cname = node.get_rdataset(IN, dns.rdatatype.CNAME)
            found = wanted or cname
            if found is None:
                break  # NODATA
            response.answer.append(dns.rrset.from_rdata_list(name, found.ttl, found))
            if wanted is not None:
                return
            name = cname[0].target
            zone = self._zone_for(name)
            if zone is None:
                return  # target outside our zones: the client chases it
        else:  # CNAME loop
            response.answer.clear()
            response.set_rcode(dns.rcode.SERVFAIL)
            return
        response.authority.append(zone.soa)

    def _zone_for(self, name: dns.name.Name) -> _Zone | None:
        """The most specific served zone containing name."""
        return max(
            (zone for zone in self._zones if name.is_subdomain(zone.origin)),
            key=lambda zone: len(zone.origin),
            default=None,
        )


class _UdpProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to the server and sends back its answer, if any."""

    def __init__(self, handle: Callable[[bytes, str], bytes | None]) -> None:
        self._handle = handle

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        answer = self._handle(data, "udp")
        if answer is not None:
            self._transport.sendto(answer, addr)


def _format_error(wire: bytes) -> bytes | None:
    """FORMERR for an unparsable query with a header; None for anything else."""
    if len(wire) < 12 or wire[2] & 0x80:  # too short, or QR set (a response)
        return None
    response = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    response.flags = dns.flags.QR
    response.set_rcode(dns.rcode.FORMERR)
    return response.to_wire()


def _bind(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on the same port; port 0 picks a free one."""
    attempt = 1
    while True:
        udp = _bound_socket(host, port, socket.SOCK_DGRAM)
        try:
            return udp, _bound_socket(host, udp.getsockname()[1], socket.SOCK_STREAM)
        except OSError:
            udp.close()
            if port or attempt == BIND_ATTEMPTS:
                raise
            attempt += 1


def _bound_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A socket bound to (host, port); stream sockets also listen."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind)
    stream = kind == socket.SOCK_STREAM
    try:
        if stream:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if stream:
            sock.listen()
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zones", nargs="+", type=Path, metavar="ZONEFILE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5353)
    args = parser.parse_args(argv)
    try:
        server = DnsServer(args.zones, args.host, args.port)
    except ZoneError as err:
        parser.exit(1, f"{err}\n")
    with server:
        print(f"serving on {server.host} port {server.port} (UDP+TCP)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
