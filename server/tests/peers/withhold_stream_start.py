"""A QUIC client that never sends the start of its streams (aioquic, a real QUIC stack).

Each connection opens STREAMS bidirectional streams and queues PER_STREAM bytes on each, then
takes the first bytes of every stream out of what aioquic will send: the head, and the token in
it, never arrive, so the daemon can read nothing and QUIC must hold whatever arrives past the
gap. The data goes out as fast as the daemon's flow control lets it. Once every connection has
stopped sending, one JSON line reports each connection's credit (the daemon's MAX_DATA) and
what it sent; the connections stay open until stdin closes.

usage: withhold_stream_start.py CONNECTIONS STREAMS PER_STREAM   (REAPER_STATE_DIR set)
"""

import asyncio
import json
import os
import pathlib
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.quic.configuration import QuicConfiguration

WITHHELD = 64

state = pathlib.Path(os.environ["REAPER_STATE_DIR"])
host, port = (state / "endpoint").read_text().strip().rsplit(":", 1)
connections, streams, per_stream = (int(a) for a in sys.argv[1:4])


async def flood(results: list, release: asyncio.Event) -> None:
    config = QuicConfiguration(
        is_client=True,
        alpn_protocols=["reaper/1"],
        server_name="localhost",
        verify_mode=ssl.CERT_REQUIRED,
        max_data=1 << 24,
        max_stream_data=1 << 24,
    )
    config.load_verify_locations(cafile=str(state / "cert.pem"))
    async with connect(host.strip("[]"), int(port), configuration=config) as client:
        quic = client._quic
        for _ in range(streams):
            stream_id = quic.get_next_available_stream_id()
            quic.send_stream_data(stream_id, b"\x01" * per_stream, end_stream=False)
            quic._streams[stream_id].sender._pending.subtract(0, WITHHELD)
        client.transmit()
        last, still = -1, 0
        for _ in range(300):  # 30 s at most
            await asyncio.sleep(0.1)
            client.transmit()
            sent = quic._remote_max_data_used
            still = still + 1 if sent == last else 0
            last = sent
            if still >= 5:
                break
        results.append({"credit": quic._remote_max_data, "sent": last})
        await release.wait()


async def main() -> None:
    results: list = []
    release = asyncio.Event()
    tasks = [asyncio.create_task(flood(results, release)) for _ in range(connections)]
    while len(results) < connections:
        for task in tasks:
            if task.done():
                task.result()  # raises what went wrong
        await asyncio.sleep(0.05)
    print(json.dumps(results), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    release.set()
    await asyncio.gather(*tasks)


asyncio.run(main())
