#!/usr/bin/python3
"""delay_relay: a TCP relay that adds network distance, for the benchmark (asyncio, stdlib only).

Every byte is delivered to the other side DELAY milliseconds after it was read, in each direction,
so a request/response exchange through the relay costs one round trip of 2 x DELAY, as it would
to a distant server. A new connection also pays one round trip for the TCP handshake that a real
network would charge: the client's first bytes leave the relay no earlier than accept + 2 x DELAY
+ DELAY (turn this off with --no-connect-rtt). Order is kept; EOF (half-close) is relayed after
the data before it, with the same delay.

    delay_relay.py --listen 127.0.0.1:0 --target 127.0.0.1:8443 [--delay-ms 10] [--port-file F]

With --listen port 0 the kernel chooses the port; it is printed ("delay_relay: listening on
127.0.0.1:PORT") and written to --port-file when given. Runs until SIGTERM or SIGINT.
"""
import argparse
import asyncio
import signal
import socket
import sys


def split_addr(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % s)
    return host.strip("[]"), int(port)


async def pump(reader, writer, delay, not_before):
    """Copies reader to writer, each chunk delayed; not_before: earliest monotonic send time."""
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def read_side():
        try:
            while True:
                data = await reader.read(65536)
                due = max(loop.time(), not_before) + delay
                queue.put_nowait((due, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            queue.put_nowait((loop.time(), None))

    async def write_side():
        try:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:  # reset: give up on this direction
                    writer.transport.abort()
                    return
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    await asyncio.gather(read_side(), write_side())


async def handle(client_reader, client_writer, target, delay, connect_rtt):
    loop = asyncio.get_running_loop()
    accepted = loop.time()
    sock = client_writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.transport.abort()
        return
    up_sock = up_writer.get_extra_info("socket")
    if up_sock is not None:
        up_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # The handshake's round trip: the client could only send once its SYN-ACK had come back.
    not_before = accepted + (2 * delay if connect_rtt else 0.0)
    try:
        await asyncio.gather(pump(client_reader, up_writer, delay, not_before),
                             pump(up_reader, client_writer, delay, 0.0))
    finally:
        for w in (client_writer, up_writer):
            try:
                w.close()
            except Exception:
                pass


async def main_async(args):
    host, port = args.listen
    delay = args.delay_ms / 1000.0
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args.target, delay, args.connect_rtt), host, port,
        backlog=1024)
    actual = server.sockets[0].getsockname()[1]
    line = "delay_relay: listening on %s:%d" % (host, actual)
    print(line, flush=True)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write("%d\n" % actual)
        import os
        os.replace(args.port_file + ".tmp", args.port_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", type=split_addr, default=("127.0.0.1", 0))
    ap.add_argument("--target", type=split_addr, required=True)
    ap.add_argument("--delay-ms", type=float, default=10.0, help="one-way delay (default 10)")
    ap.add_argument("--no-connect-rtt", dest="connect_rtt", action="store_false",
                    help="do not charge a round trip for the TCP handshake")
    ap.add_argument("--port-file")
    args = ap.parse_args()
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
