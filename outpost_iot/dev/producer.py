"""A real agent process with a counting source, for the end-to-end tests and benchmarks.

Every reading carries ``run`` (tag) and ``n`` (field). After the buffer has committed a poll,
the producer appends ``run n ts real_ns`` lines to the journal: the journal is exactly the set
of readings that were handed to the buffer, however the process dies afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

from outpost_iot.agent import Agent, Outbox, SkewedClock, SystemClock, load_config
from outpost_iot.agent._clock import Clock
from outpost_iot.agent.sources import Collection
from outpost_iot.wire import Event, Reading


class CountingSource:
    def __init__(
        self,
        *,
        run: str,
        per_poll: int,
        interval: float,
        clock: Clock,
        limit: int,
        slots: bool = False,
    ) -> None:
        self.name = "counter"
        self.interval = interval
        self._run, self._per_poll, self._clock, self._limit = run, per_poll, clock, limit
        self._slots = slots
        self.n = 0

    def collect(self) -> Collection:
        out = Collection()
        ts = self._clock.wall_ns()
        for i in range(self._per_poll):
            if self._limit and self.n >= self._limit:
                break
            n = self.n
            out.readings.append(
                Reading(
                    measurement="counter",
                    # With slots, each reading of a poll is its own series (as sensors are):
                    # a store that keeps milliseconds (VictoriaMetrics) keeps them all.
                    tags={"run": self._run, "slot": str(i)} if self._slots else {"run": self._run},
                    fields={"n": n, "value": n * 0.5, "even": n % 2 == 0, "label": f"r{n}"},
                    ts=ts + i,
                )
            )
            self.n += 1
        return out


class JournalingAgent(Agent):
    journal: TextIO
    run_id: str

    def submit(
        self,
        readings: Sequence[Reading],
        events: Sequence[Event] = (),
        drops: Mapping[str, int] | None = None,
    ) -> None:
        super().submit(readings, events, drops)
        real = time.time_ns()
        self.journal.write(
            "".join(f"{self.run_id} {r.fields['n']} {r.ts} {real}\n" for r in readings)
        )
        self.journal.flush()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--journal", type=Path, required=True)
    p.add_argument("--run", default="0")
    p.add_argument("--per-poll", type=int, default=20)
    p.add_argument("--interval", type=float, default=0.05)
    p.add_argument(
        "--limit", type=int, default=0, help="stop producing after this many; 0 = no limit"
    )
    p.add_argument("--skew", type=float, default=0.0, help="wall clock error in seconds")
    p.add_argument("--slots", action="store_true", help="one series per reading of a poll")
    args = p.parse_args()
    config = load_config(args.config)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    clock = SkewedClock(skew_ns=int(args.skew * 1e9)) if args.skew else SystemClock()
    sources = []
    if args.per_poll > 0:
        sources.append(
            CountingSource(
                run=args.run,
                per_poll=args.per_poll,
                interval=args.interval,
                clock=clock,
                limit=args.limit,
                slots=args.slots,
            )
        )
    with (
        Outbox.for_agent(config, clock) as outbox,
        args.journal.open("a") as journal,
    ):
        agent = JournalingAgent(config=config, clock=clock, outbox=outbox, sources=sources)
        agent.journal, agent.run_id = journal, args.run
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await agent.run()


if __name__ == "__main__":
    asyncio.run(main())
