"""The floor of benchmarks/policy.py: a policy server that answers ``DUNNO`` to everything.

    python benchmarks/_dunno.py PORT

No parsing beyond finding the empty line that ends each request, no state: what is left
of a request's time is the client's, the kernel's and the event loop's.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

ANSWER = b"action=DUNNO\n\n"


class Dunno(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        ended = data.count(b"\n\n")
        self.tail = data[data.rfind(b"\n\n") + 2 :] if ended else data
        if ended:
            self.transport.write(ANSWER * ended)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Dunno, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
