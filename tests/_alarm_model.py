"""What a threshold rule does, as docs/alarms.md says it, written plainly: the model that the
collector's evaluator (tests/collector/test_alarms.py) and the gateway's
(tests/agent/test_edge_alarms.py) are held to over generated readings."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import strategies as st


def threshold_model(
    up: bool,
    level: float,
    clear_at: float,
    hold: int,
    batches: list[list[tuple[int, int, float]]],
) -> dict[int, list[tuple[int, int | None, int | None, float]]]:
    """The alarms of each series, from ``batches`` of (series, time, value) readings: (raised,
    since, cleared, value), the value of the reading that raised it or, once cleared, of the
    one that cleared it (a cleared alarm keeps only that). A batch's readings of a series are
    taken in time order, batches in the order they arrive; a reading past the level (strictly)
    starts the hold, the hold's length reached raises, a reading back past the clear level
    (strictly) clears; a reading neither past the level nor raising ends the hold."""
    out: dict[int, list[Any]] = {}
    state: dict[int, tuple[bool, int | None]] = {}
    for batch in batches:
        for s in sorted({s for s, _, _ in batch}):
            opened, pending = state.get(s, (False, None))
            for ts, v in sorted((ts, v) for s2, ts, v in batch if s2 == s):
                if opened:
                    if (v < clear_at) if up else (v > clear_at):
                        out[s][-1][1:] = [None, ts, v]
                        opened, pending = False, None
                elif (v > level) if up else (v < level):
                    pending = ts if pending is None else pending
                    if ts - pending >= hold:
                        out.setdefault(s, []).append([ts, pending, None, v])
                        opened, pending = True, None
                else:
                    pending = None
            state[s] = (opened, pending)
    return {s: [tuple(a) for a in alarms] for s, alarms in out.items()}


@st.composite
def readings_in_batches(draw: st.DrawFn, series: int) -> list[list[tuple[int, int, float]]]:
    """Batches of (series, second, value) readings: up to three of ``series`` series, each at
    distinct whole seconds, with values around a level of 10 and clear levels of 8 and 12 (the
    levels themselves included), arriving in any order, split anywhere."""
    values = st.sampled_from([5.0, 7.5, 8.0, 9.0, 10.0, 11.0, 12.0, 15.0])
    points = []
    for s in draw(st.lists(st.sampled_from(range(series)), min_size=1, max_size=3, unique=True)):
        times = draw(st.lists(st.integers(0, 40), min_size=1, max_size=12, unique=True))
        points += [(s, t, draw(values)) for t in times]
    points = draw(st.permutations(points))
    cuts = sorted(draw(st.lists(st.integers(1, max(1, len(points) - 1)), max_size=4, unique=True)))  # fmt: skip
    bounds = [0, *(c for c in cuts if c < len(points)), len(points)]
    return [points[a:b] for a, b in itertools.pairwise(bounds) if a < b]
