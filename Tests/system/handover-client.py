#!/usr/bin/env python3
"""Streaming sessions and new arrivals through a relay service, for handover-test.sh.

  handover-client.py echo PORT [PORTFILE]           an echo target on 127.0.0.1:PORT (0: one
      the system chooses); with PORTFILE, the port it listens on is written there once bound
  handover-client.py stream PORT SESSIONS STATUS STOP
      opens SESSIONS sessions to 127.0.0.1:PORT, each streaming a pseudo-random pattern of
      its own and reading the echo; writes "streaming N" to STATUS once all are open; while
      they stream, a new session is opened every 25 ms (a line sent, its echo awaited);
      once the file STOP exists every session half-closes, reads the rest of its echo, and
      the digests of what each sent and received are compared. Prints one JSON object.
Every wait is bounded.
"""
import asyncio, hashlib, json, os, random, sys, time

CHUNK = 1024
PAUSE = 0.05
TIMEOUT = 30


async def echo(port, portfile=None):
    async def serve(reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    if portfile:
        with open(portfile + ".tmp", "w") as f:
            f.write(str(server.sockets[0].getsockname()[1]))
        os.rename(portfile + ".tmp", portfile)
    async with server:
        await server.serve_forever()


async def session(port, index, stop, opened):
    rng = random.Random(index)
    sent, received = hashlib.sha256(), hashlib.sha256()
    counts = {"sent": 0, "received": 0}
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    opened()

    async def send():
        while not stop.is_set():
            data = rng.randbytes(CHUNK)
            sent.update(data)
            counts["sent"] += len(data)
            writer.write(data)
            await asyncio.wait_for(writer.drain(), TIMEOUT)
            await asyncio.sleep(PAUSE)
        writer.write_eof()

    async def receive():
        while True:
            data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
            if not data:
                return
            received.update(data)
            counts["received"] += len(data)

    try:
        await asyncio.gather(send(), receive())
        ok = sent.digest() == received.digest()
        return {"ok": ok, **counts, "error": None if ok else "digest mismatch"}
    except Exception as error:
        return {"ok": False, **counts, "error": f"{type(error).__name__}: {error}"}
    finally:
        writer.close()


async def arrival(port, index):
    line = f"arrival {index}\n".encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
        writer.write(line)
        await writer.drain()
        reply = await asyncio.wait_for(reader.readexactly(len(line)), TIMEOUT)
        writer.close()
        return None if reply == line else f"arrival {index}: wrong echo"
    except Exception as error:
        return f"arrival {index}: {type(error).__name__}: {error}"


async def stream(port, sessions, status, stop_file):
    stop = asyncio.Event()
    opened = [0]

    def one_opened():
        opened[0] += 1

    tasks = [asyncio.create_task(session(port, i, stop, one_opened)) for i in range(sessions)]
    deadline = time.monotonic() + TIMEOUT
    while opened[0] < sessions and time.monotonic() < deadline and not all(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    with open(status, "w") as f:
        f.write(f"streaming {opened[0]}\n")
    arrivals = []
    index = 0
    deadline = time.monotonic() + 120
    while not os.path.exists(stop_file) and time.monotonic() < deadline:
        arrivals.append(asyncio.create_task(arrival(port, index)))
        index += 1
        await asyncio.sleep(0.025)
    stop.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [f for f in await asyncio.gather(*arrivals) if f]
    errors = [r if isinstance(r, BaseException) else r["error"] for r in results
              if isinstance(r, BaseException) or not r["ok"]]
    done = [r for r in results if not isinstance(r, BaseException)]
    print(json.dumps({
        "sessions": sessions,
        "ok": sum(1 for r in done if r["ok"]),
        "bytesSent": sum(r["sent"] for r in done),
        "bytesReceived": sum(r["received"] for r in done),
        "errors": [str(e) for e in errors[:5]],
        "arrivals": index,
        "arrivalFailures": len(failures),
        "arrivalErrors": failures[:5],
    }))


if __name__ == "__main__":
    if sys.argv[1] == "echo":
        asyncio.run(echo(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
    else:
        asyncio.run(stream(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
