"""Stream partial results while KataGo searches, as a GUI's analysis panel does; stop after
five seconds. Needs a running daemon (`katapool start`).

    python docs/examples/ponder.py
"""

import asyncio
import time

from katapool.client import AsyncClient, Position


async def main() -> None:
    position = Position.from_moves(["Q16", "D4"])
    async with await AsyncClient.connect() as client:
        started = time.monotonic()
        async with client.analyze_stream(position, every=0.5) as stream:
            async for info in stream:
                print(f"{time.monotonic() - started:4.1f}s  {info.visits:6d} visits  "
                      f"best {info.best_move}")
                if time.monotonic() - started > 5:
                    await stream.cancel()  # the final result still arrives, then the loop ends
        print("final:", stream.final.best_move if stream.final else None)


asyncio.run(main())
