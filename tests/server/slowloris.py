"""A slowloris attacker as its own process: ``python -m tests.server.slowloris PORT N SECONDS``.

Holds ``N`` connections to 127.0.0.1:PORT, each with a request head that never ends (one
byte a second), reconnecting whenever the server cuts one, for ``SECONDS`` seconds; then
exits by itself. It prints ``holding K`` each second, so a test can wait until the attack
is at full strength. A process of its own, so the attacker's work does not slow down
the test's own measurements; and at the lowest CPU priority, since on the test's machine
it competes with serve for the cores an attacker elsewhere would not share.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time


async def _one(port: int, stop: asyncio.Event, held: list[int]) -> None:
    while not stop.is_set():
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        held[0] += 1
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")
            while not stop.is_set():
                await asyncio.sleep(1.0)
                writer.write(b"X")
                await writer.drain()
        except OSError:
            pass
        finally:
            held[0] -= 1
            writer.close()


async def main(port: int, n: int, seconds: float) -> None:
    os.nice(19)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stop = asyncio.Event()
    held = [0]
    end = time.monotonic() + seconds
    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(_one(port, stop, held))
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            print(f"holding {held[0]}", flush=True)
        stop.set()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])))
