"""A fleet coming back after a regional outage: a model driven by the real reconnect policy.

.venv/bin/python -m bench.fleet_storm [--gateways 10000] [--outage 300] [--connect-ms 2.4] [--cores 1]

Not a measurement: a discrete-event model of N gateways that lost the broker at the same
moment, using :class:`mqtt.Backoff` exactly as the uplink does, against a broker that
takes one mTLS connection at a time per core at the CPU cost ``bench.broker_connects``
measured (2.8 ms per connect on one core of the 2-core machine). While the outage lasts, every
attempt is refused at once (free for the broker). Afterwards every attempt joins the broker's
queue of handshakes; a gateway whose handshake has not finished within its connect timeout
gives up and counts that as a busy broker, and the broker still spends on it what reading a
ClientHello into a closed connection costs (0.8 ms, measured the same way). The former policy (uniform(base/2, ceiling), 1 s doubling to 60 s, no busy signal)
is modelled alongside for comparison.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from collections import Counter
from dataclasses import dataclass

from outpost_iot.mqtt import Backoff


class FormerBackoff:
    """The uplink's policy before issue 14: uniform(base/2, min(cap, base * 2**n))."""

    def __init__(self, *, base: float, cap: float, rng: random.Random) -> None:
        self._base, self._cap, self._rng, self._n = base, cap, rng, 0

    def next_delay(self, *, busy: bool = False) -> float:
        ceiling = min(self._cap, self._base * 2**self._n)
        self._n = min(self._n + 1, 30)
        return self._rng.uniform(self._base / 2, ceiling)


@dataclass
class Outcome:
    policy: str
    reconnected_50_s: float | None
    reconnected_99_s: float | None
    reconnected_all_s: float | None
    peak_attempts_per_s: int
    attempts_during_outage_per_s: float
    handshakes: int
    abandoned: int


def simulate(
    policy: str,
    *,
    gateways: int,
    outage: float,
    connect_s: float,
    abandoned_s: float,
    cores: int,
    timeout: float,
    seed: int,
    busy_cap: float = 120.0,
) -> Outcome:
    rng = random.Random(seed)
    policies = []
    for _ in range(gateways):
        if policy == "former":
            policies.append(FormerBackoff(base=1.0, cap=60.0, rng=rng))
        elif policy == "low cap only":
            policies.append(Backoff(base=0.5, cap=4.0, rng=rng))
        else:
            policies.append(Backoff(base=0.5, cap=4.0, busy_cap=busy_cap, rng=rng))  # the agent's
    # Everyone notices the loss within a second (a reset, or a keepalive). Events: (time,
    # gateway, kind, busy); kind 0 = an attempt failed (pick a delay), 1 = an attempt arrives.
    events: list[tuple[float, int, int, bool]] = [
        (rng.uniform(0, 1.0), g, 0, False) for g in range(gateways)
    ]
    heapq.heapify(events)
    free_at = [0.0] * cores  # when each broker core is next free
    attempts: Counter[int] = Counter()
    during = 0
    handshakes = abandoned = 0
    done_at: list[float] = []
    horizon = outage + 1800.0
    while events:
        t, g, kind, busy = heapq.heappop(events)
        if t > horizon:
            break
        if kind == 0:
            heapq.heappush(events, (t + policies[g].next_delay(busy=busy), g, 1, False))
            continue
        if t < outage:  # refused at once
            during += 1
            heapq.heappush(events, (t, g, 0, False))
            continue
        attempts[int(t - outage)] += 1
        core = min(range(cores), key=free_at.__getitem__)
        start = max(t, free_at[core])
        handshakes += 1
        if start + connect_s - t > timeout:
            # The gateway gave up before its handshake could finish: the broker still reads
            # its ClientHello when it gets to it, and answers into a closed connection.
            abandoned += 1
            free_at[core] = start + abandoned_s
            heapq.heappush(events, (t + timeout, g, 0, True))
        else:
            free_at[core] = start + connect_s
            done_at.append(start + connect_s - outage)
    done_at.sort()

    def reached(fraction: float) -> float | None:
        k = max(1, int(gateways * fraction))
        return round(done_at[k - 1], 1) if len(done_at) >= k else None  # None: not in 30 min

    return Outcome(
        policy=policy,
        reconnected_50_s=reached(0.5),
        reconnected_99_s=reached(0.99),
        reconnected_all_s=reached(1.0),
        peak_attempts_per_s=max(attempts.values()),
        attempts_during_outage_per_s=round(during / outage, 0),
        handshakes=handshakes,
        abandoned=abandoned,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gateways", type=int, default=10_000)
    p.add_argument("--outage", type=float, default=300.0)
    p.add_argument("--connect-ms", type=float, default=2.8, help="broker CPU per connect")
    p.add_argument(
        "--abandoned-ms", type=float, default=0.8, help="broker CPU per abandoned handshake"
    )
    p.add_argument("--cores", type=int, default=1)
    p.add_argument("--timeout", type=float, default=5.0, help="the gateway's connect_timeout")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--busy-cap", type=float, default=120.0, help="reconnect_busy_max")
    args = p.parse_args()
    for policy in ("former", "low cap only", "product"):
        out = simulate(
            policy,
            gateways=args.gateways,
            outage=args.outage,
            connect_s=args.connect_ms / 1000,
            abandoned_s=args.abandoned_ms / 1000,
            cores=args.cores,
            timeout=args.timeout,
            seed=args.seed,
            busy_cap=args.busy_cap,
        )
        print(
            json.dumps(
                {
                    "model": "fleet_storm",
                    "gateways": args.gateways,
                    "cores": args.cores,
                    "connect_ms": args.connect_ms,
                    **out.__dict__,
                }
            )
        )


if __name__ == "__main__":
    main()
