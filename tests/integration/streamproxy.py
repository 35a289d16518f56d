"""A livemig stream walker and a filtering proxy, for tests that lose or
corrupt records on purpose (docs/stream-format.md).  Standard library only.

walk(read) yields the stream as units, each a contiguous run of bytes that
can be dropped or changed on its own: ("header", raw, {}), ("config", raw,
{flags, blocks}), ("section", raw, {type, id, idstr, instance}) for a whole
device or globalstate section, ("ram-head", raw, {type}) + ("ram", raw,
{rtype, block, first, count, data_at}) per RAM record + ("ram-tail", raw, {})
for a RAM section, ("command", raw, {cmd}), ("vmdesc", raw, {}), ("eof", raw,
{}).  Mapped-ram files are not walked (their regions lie outside the
records).

Proxy(listen_path, target_path, policy) accepts the source's connections
and forwards each to the destination; policy(conn, kind, raw, info) returns
the bytes to forward (raw, changed bytes, or b"" to drop), where conn is
"main" or "multifd<i>" and, on multifd connections, kind is "hello" or
"packet" with info {type, flags, runs: [(kind, block, first, count)],
payload_at}.
"""
import socket
import struct
import threading

REC_CONFIG, REC_START, REC_PART, REC_END, REC_FULL, REC_EOF, REC_COMMAND, REC_VMDESC = range(1, 9)
RAM_PAGES, RAM_ZERO, RAM_EOS, RAM_MULTIFD_SYNC, RAM_MAPPED_BLOCK = range(1, 6)
CONFIG_CHECKSUM = 1 << 2


def file_reader(f):
    def read(n):
        b = f.read(n)
        if len(b) != n:
            raise EOFError("stream ends early")
        return b
    return read


def sock_reader(s):
    def read(n):
        out = bytearray()
        while len(out) < n:
            chunk = s.recv(min(n - len(out), 1 << 20))
            if not chunk:
                raise EOFError("connection closed")
            out += chunk
        return bytes(out)
    return read


def walk(read, seek=None):
    """Yields (kind, raw, info) units of a stream (see module doc); with
    seek (a file), a mapped-ram block is one ("mapped", raw, {block,
    bitmap_offset, pages_offset}) unit and the walk goes on after its pages."""
    blocks = []
    yield "header", read(8), {}
    page_size = {}
    checksum = False
    idstr_of = {}
    while True:
        t = read(1)
        typ = t[0]
        if typ == REC_CONFIG:
            ln = read(4)
            body = read(struct.unpack(">I", ln)[0])
            flags, n = struct.unpack(">II", body[16:24])
            pos = 24
            for i in range(n):
                l = body[pos]
                name = body[pos + 1:pos + 1 + l].decode()
                size, ps = struct.unpack(">QI", body[pos + 1 + l:pos + 13 + l])
                blocks.append((name, size, ps))
                page_size[i] = ps
                pos += 13 + l
            checksum = bool(flags & CONFIG_CHECKSUM)
            yield "config", t + ln + body, {"flags": flags, "blocks": blocks}
        elif typ in (REC_START, REC_FULL, REC_PART, REC_END):
            head = t + read(4)
            sid = struct.unpack(">I", head[1:5])[0]
            if typ in (REC_START, REC_FULL):
                l = read(1)
                name = read(l[0])
                rest = read(8)
                head += l + name + rest
                idstr_of[sid] = (name.decode(), struct.unpack(">I", rest[:4])[0])
            idstr, instance = idstr_of[sid]
            info = {"type": typ, "id": sid, "idstr": idstr, "instance": instance}
            if idstr == "ram":
                yield "ram-head", head, info
                while True:
                    r = read(1)
                    if r[0] == RAM_EOS:
                        yield "ram-tail", r + read(4), info
                        break
                    if r[0] == RAM_MULTIFD_SYNC:
                        yield "ram", r + read(8), {"rtype": r[0]}
                        continue
                    if r[0] == RAM_MAPPED_BLOCK and seek:
                        rec = read(26)
                        blk, _, _, boff, poff = struct.unpack(">HIIQQ", rec)
                        yield "mapped", r + rec, {"block": blk, "bitmap_offset": boff,
                                                  "pages_offset": poff}
                        seek(poff + blocks[blk][1])
                        continue
                    if r[0] not in (RAM_PAGES, RAM_ZERO):
                        raise ValueError("RAM record 0x%02x not walked" % r[0])
                    h = read(14)
                    blk, first, count = struct.unpack(">HQI", h[:14])
                    if checksum:
                        # Page checksums (PAGES), then one over header and table.
                        h += read((count * 8 if r[0] == RAM_PAGES else 0) + 8)
                    data = read(count * page_size[blk]) if r[0] == RAM_PAGES else b""
                    yield "ram", r + h + data, {"rtype": r[0], "block": blk, "first": first,
                                                "count": count, "data_at": 1 + len(h)}
            else:
                ln = read(4)
                payload = read(struct.unpack(">I", ln)[0])
                yield "section", head + ln + payload + read(4), info
        elif typ == REC_COMMAND:
            h = read(4)
            yield "command", t + h + read(struct.unpack(">HH", h)[1]), {"cmd": struct.unpack(">H", h[:2])[0]}
        elif typ == REC_VMDESC:
            ln = read(4)
            yield "vmdesc", t + ln + read(struct.unpack(">I", ln)[0]), {}
        elif typ == REC_EOF:
            yield "eof", t, {}
            return
        else:
            raise ValueError("unknown record 0x%02x" % typ)


def walk_multifd(read):
    """Yields the hello and the packets of a multifd connection."""
    hello = read(28)
    yield "hello", hello, {"index": struct.unpack(">H", hello[8:10])[0]}
    while True:
        t = read(1)
        if t[0] == 1:
            h = read(11)
            flags, nruns, plen = struct.unpack(">IHI", h[:10])
            table = read(15 * nruns)
            runs = [struct.unpack(">BHQI", table[i * 15:i * 15 + 15]) for i in range(nruns)]
            sums = trailer = b""
            if flags & 2 and not flags & 1:
                # Uncompressed: page checksums, one over header, runs and those.
                sums = read(8 * sum(r[3] for r in runs if r[0] == RAM_PAGES) + 8)
            payload = read(plen)
            if flags & 2 and flags & 1:
                trailer = read(8)
            yield "packet", t + h + table + sums + payload + trailer, {
                "type": 1, "flags": flags, "runs": runs, "payload_at": 12 + 15 * nruns + len(sums)}
        elif t[0] == 2:
            yield "packet", t + read(8), {"type": 2}
        elif t[0] == 3:
            yield "packet", t, {"type": 3}
            return
        else:
            raise ValueError("unknown multifd packet 0x%02x" % t[0])


class Proxy:
    def __init__(self, listen_path, target_path, policy):
        self.target = target_path
        self.policy = policy
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(listen_path)
        self.lsock.listen(16)
        self.socks = []
        self.errors = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                src, _ = self.lsock.accept()
            except OSError:
                return
            dst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            dst.connect(self.target)
            self.socks += [src, dst]
            threading.Thread(target=self._back, args=(dst, src), daemon=True).start()
            threading.Thread(target=self._forth, args=(src, dst), daemon=True).start()

    def _back(self, dst, src):
        try:
            while True:
                b = dst.recv(65536)
                if not b:
                    break
                src.sendall(b)
            src.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _forth(self, src, dst):
        read = sock_reader(src)
        try:
            magic = read(4)
            if magic == b"LMMF":
                rest = read(24)
                index = struct.unpack(">H", rest[4:6])[0]
                conn = "multifd%d" % index
                units = walk_multifd(lambda n, buf=[magic + rest]: _prefixed(buf, read, n))
            else:
                conn = "main"
                units = walk(lambda n, buf=[magic]: _prefixed(buf, read, n))
            for kind, raw, info in units:
                out = self.policy(conn, kind, raw, info)
                if out:
                    dst.sendall(out)
            dst.shutdown(socket.SHUT_WR)
        except (OSError, EOFError, ValueError) as e:
            self.errors.append(e)
            try:
                dst.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.lsock.close()
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass


def _prefixed(buf, read, n):
    """Reads n bytes, the first ones from buf[0] (what was peeked)."""
    head = buf[0][:n]
    buf[0] = buf[0][len(head):]
    return head + (read(n - len(head)) if n > len(head) else b"")
