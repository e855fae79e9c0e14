"""A flood of connections the server must refuse: a stranger's key, correctly signed, claiming
an invented name in colony bench, as fast as it can (raw CONNECTs, a few at a time). Prints how
many it tried when stopped.

python -m bench.flood URL PREFIX
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sys
import uuid

from colonyos.security.claim import ConnectClaim
from colonyos.security.keys import generate

_AT_ONCE = 4


async def _attempt(host: str, port: int, prefix: str) -> None:
    stranger = generate()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        info = json.loads((await reader.readline()).split(b" ", 1)[1])
        claim = ConnectClaim(prefix=prefix, colony="bench", name=f"u{uuid.uuid4().hex[:12]}")
        connect = {
            "verbose": False,
            "pedantic": False,
            "protocol": 1,
            "nkey": stranger.public_key,
            "sig": base64.b64encode(stranger.sign(info["nonce"].encode())).decode(),
            "auth_token": claim.token(),
        }
        writer.write(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.readline(), 10)  # -ERR 'Authorization Violation'
    finally:
        writer.close()


async def main(url: str, prefix: str) -> None:
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    tried = 0

    async def loop() -> None:
        nonlocal tried
        while not stop.is_set():
            with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
                await _attempt(host, int(port), prefix)
            tried += 1

    tasks = [asyncio.create_task(loop()) for _ in range(_AT_ONCE)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    print(tried, flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
