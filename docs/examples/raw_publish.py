"""Submit a function spec with plain nats-py to a secure colony: all it takes.

python docs/examples/raw_publish.py SEED_FILE NAME [NATS_URL]

SEED_FILE is your key (colonies key generate); NAME is the name the colony owner added it under
(colonies user add --name NAME --key ...). The connection proves the key by signing the
server's nonce, says which installation, colony and name it acts as, and takes its replies on
its own inbox: the server lets nothing else through.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys

import nats

PREFIX, COLONY = "colonies", "dev"


async def submit(seed_file: str, name: str, url: str = "nats://127.0.0.1:4222") -> str:
    claim = {"prefix": PREFIX, "colony": COLONY, "name": name}
    nc = await nats.connect(
        url,
        nkeys_seed=seed_file,  # signs the nonce; the seed never leaves this machine
        token=json.dumps(claim),  # who it acts as
        inbox_prefix=f"_INBOX.{PREFIX}.{COLONY}.{name}",  # the only inbox it may read
    )
    try:
        spec = {"funcname": "echo", "args": ["hello"], "conditions": {"executortype": "echo"}}
        process_id = secrets.token_hex(32)  # yours to choose; publishing it twice is harmless
        await nc.jetstream().publish(
            f"{PREFIX}.{COLONY}.specs.echo",
            json.dumps(spec).encode(),
            headers={"Nats-Msg-Id": process_id},
        )
        return process_id
    finally:
        await nc.close()


if __name__ == "__main__":
    print(asyncio.run(submit(*sys.argv[1:])))
