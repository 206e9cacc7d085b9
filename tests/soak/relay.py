#!/usr/bin/python3
"""relay: a TCP relay that misbehaves on command, for the soak test (asyncio, stdlib only).

It listens on one loopback address that never changes, and connects every accepted connection
to the current target (a stand-in for Apple). The soak test points the proxy at the relay, so the
upstream can be reset, stalled, restarted or swapped for one with a bad certificate while the
proxy's configuration stays the same. TLS passes through untouched: the relay only sees bytes.

    relay.py --listen 127.0.0.1:PORT --target 127.0.0.1:PORT [--log FILE]

Commands, one per line on stdin; each is answered by one line on stdout ("ok ..." or
"error ..."), so a driver can wait for a command to have taken effect:

    target HOST:PORT   new connections go there (existing ones keep their target)
    reset              every open connection is closed with a TCP RST on both sides
    close              every open connection is closed with a FIN on both sides (after what is
                       already buffered), as when the upstream process exits
    stall              stop moving bytes in both directions on every connection, and hold new
                       connections (accepted, never connected onwards) until "unstall"
    unstall            move bytes again; held connections connect to the current target
    listen off|on      close the listening socket (connection refused) or open it again on the
                       same port
    stats              counters as JSON
    quit               exit

A connection whose target cannot be reached is closed (FIN) at once. Every event goes to --log
as one JSON object per line.
"""
import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import time

READ_HIGH = 1 << 20  # bytes buffered for one side before the other side stops being read


def split_addr(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % s)
    host = host.strip("[]")
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise argparse.ArgumentTypeError("loopback addresses only, got %r" % s)
    return host, int(port)


def rst(transport):
    """Closes transport with an RST (SO_LINGER 0) instead of a FIN."""
    if transport is None or transport.is_closing():
        if transport is not None:
            transport.abort()
        return
    sock = transport.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    transport.abort()


class Side(asyncio.Protocol):
    """One TCP connection of a pair; .peer is the other Side once both exist."""

    def __init__(self, pair, name):
        self.pair = pair
        self.name = name
        self.transport = None
        self.peer = None
        self.pending = []        # data read before the peer existed
        self.eof = False
        self.write_paused = False

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=READ_HIGH, low=READ_HIGH // 4)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data):
        self.pair.bytes[self.name] += len(data)
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
            return
        self.peer.transport.write(data)

    def eof_received(self):
        self.eof = True
        if self.peer is not None and self.peer.transport is not None:
            if not self.peer.transport.is_closing() and self.peer.transport.can_write_eof():
                self.peer.transport.write_eof()
        self.pair.maybe_done()
        return True  # keep our side open for the other direction

    def pause_writing(self):
        # Our output is full: stop reading the other side (backpressure).
        self.write_paused = True
        if self.peer is not None and self.peer.transport is not None:
            self.pair.set_reading(self.peer, False)

    def resume_writing(self):
        self.write_paused = False
        if self.peer is not None and self.peer.transport is not None:
            self.pair.set_reading(self.peer, True)

    def connection_lost(self, exc):
        self.pair.side_lost(self, exc)


class Pair:
    """A relayed connection: .down (from the proxy) and .up (to the target)."""

    def __init__(self, relay, pid):
        self.relay = relay
        self.id = pid
        self.down = Side(self, "down")
        self.up = None
        self.bytes = {"down": 0, "up": 0}
        self.closed = False
        self.started = False

    def set_reading(self, side, on):
        """Reads side unless the relay is stalled or the other side's output is full."""
        t = side.transport
        if t is None or t.is_closing():
            return
        want = on and not self.relay.stalled and not (side.peer and side.peer.write_paused)
        try:
            if want and not t.is_reading():
                t.resume_reading()
            elif not want and t.is_reading():
                t.pause_reading()
        except (AttributeError, RuntimeError):
            pass

    async def connect(self, target):
        self.started = True
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(lambda: Side(self, "up"), target[0], target[1])
        except OSError as e:
            self.relay.log("connect_failed", pair=self.id, target="%s:%d" % target, error=str(e))
            self.relay.counters["connect_failed"] += 1
            self.close(hard=False)
            return
        if self.closed:
            up.transport.abort()
            return
        self.up = up
        up.peer, self.down.peer = self.down, up
        for data in self.down.pending:
            up.transport.write(data)
        self.down.pending = []
        if self.down.eof and up.transport.can_write_eof():
            up.transport.write_eof()
        self.set_reading(self.down, True)
        self.set_reading(up, True)

    def maybe_done(self):
        if self.down.eof and self.up is not None and self.up.eof:
            self.close(hard=False)

    def side_lost(self, side, exc):
        if self.closed:
            return
        other = side.peer
        if other is not None and other.transport is not None:
            # A reset on one side becomes a reset on the other; a clean close, a close after
            # the buffered data.
            if exc is not None:
                rst(other.transport)
            else:
                other.transport.close()
        self.closed = True
        self.relay.pairs.pop(self.id, None)

    def close(self, hard):
        if self.closed:
            return
        self.closed = True
        self.relay.pairs.pop(self.id, None)
        for s in (self.down, self.up):
            if s is not None and s.transport is not None:
                if hard:
                    rst(s.transport)
                else:
                    s.transport.close()


class Relay:
    def __init__(self, listen, target, log_path):
        self.listen_addr = listen
        self.target = target
        self.server = None
        self.stalled = False
        self.pairs = {}
        self.next_id = 1
        self.counters = {"accepted": 0, "connect_failed": 0, "reset": 0, "closed": 0}
        self.logf = open(log_path, "a", encoding="utf-8") if log_path else None

    def log(self, event, **fields):
        if self.logf is None:
            return
        rec = {"event": event, "time": round(time.time(), 6)}
        rec.update(fields)
        self.logf.write(json.dumps(rec) + "\n")
        self.logf.flush()

    def accept(self):
        pid = self.next_id
        self.next_id += 1
        pair = Pair(self, pid)
        self.pairs[pid] = pair
        self.counters["accepted"] += 1
        loop = asyncio.get_running_loop()

        def made(transport, orig=pair.down.connection_made):
            orig(transport)
            pair.set_reading(pair.down, True)
            if not self.stalled:
                loop.create_task(pair.connect(self.target))

        pair.down.connection_made = made
        return pair.down

    async def start_listening(self):
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.accept, self.listen_addr[0],
                                               self.listen_addr[1], reuse_address=True,
                                               backlog=1024)

    async def command(self, line):
        words = line.split()
        if not words:
            return "error empty command"
        cmd, args = words[0], words[1:]
        if cmd == "target" and len(args) == 1:
            self.target = split_addr(args[0])
            self.log("target", target=args[0])
            return "ok target %s" % args[0]
        if cmd in ("reset", "close"):
            pairs = list(self.pairs.values())
            for p in pairs:
                p.close(hard=cmd == "reset")
            self.counters["reset" if cmd == "reset" else "closed"] += len(pairs)
            self.log(cmd, connections=len(pairs))
            return "ok %s %d" % (cmd, len(pairs))
        if cmd == "stall":
            self.stalled = True
            for p in list(self.pairs.values()):
                for s in (p.down, p.up):
                    if s is not None:
                        p.set_reading(s, False)
            self.log("stall", connections=len(self.pairs))
            return "ok stall %d" % len(self.pairs)
        if cmd == "unstall":
            self.stalled = False
            loop = asyncio.get_running_loop()
            held = 0
            for p in list(self.pairs.values()):
                if not p.started:
                    held += 1
                    loop.create_task(p.connect(self.target))
                for s in (p.down, p.up):
                    if s is not None:
                        p.set_reading(s, True)
            self.log("unstall", held=held)
            return "ok unstall %d" % held
        if cmd == "listen" and args in (["off"], ["on"]):
            if args[0] == "off" and self.server is not None:
                self.server.close()
                await self.server.wait_closed()
                self.server = None
            elif args[0] == "on" and self.server is None:
                await self.start_listening()
            self.log("listen", state=args[0])
            return "ok listen %s" % args[0]
        if cmd == "stats":
            st = dict(self.counters, open=len(self.pairs), stalled=self.stalled,
                      listening=self.server is not None, target="%s:%d" % self.target)
            return "ok " + json.dumps(st)
        if cmd == "quit":
            return None
        return "error unknown command %r" % line.strip()


async def main_async(args):
    relay = Relay(args.listen, args.target, args.log)
    await relay.start_listening()
    port = relay.server.sockets[0].getsockname()[1]
    print("relay: listening on %s:%d" % (args.listen[0], port), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            break
        reply = await relay.command(line.decode("utf-8", "replace"))
        if reply is None:
            print("ok quit", flush=True)
            break
        print(reply, flush=True)
    for p in list(relay.pairs.values()):
        p.close(hard=False)


def main(argv=None):
    ap = argparse.ArgumentParser(description="fault-injecting TCP relay (soak test)")
    ap.add_argument("--listen", type=split_addr, required=True)
    ap.add_argument("--target", type=split_addr, required=True)
    ap.add_argument("--log", default=None)
    args = ap.parse_args(argv)
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
