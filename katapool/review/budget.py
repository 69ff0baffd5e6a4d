"""Fit a review into a time budget: measure the engine's speed on this machine, then choose how
many visits every position gets and how many of the largest swings can be searched deeper.

A review has two passes. The first gives every position the same (often small) number of
visits: enough for the graph and the table. The second re-searches the positions around the
largest swings at ``trust_visits``, the depth at which a winrate loss is taken to mean something;
only moves checked at that depth are flagged as mistakes (see ``GameReview.is_trusted``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from katapool.review.words import counted

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smh])")


def parse_duration(text: str) -> float:
    """Seconds in ``"300"``, ``"90s"``, ``"5m"``, ``"1h30m"`` or ``"2.5m"``."""
    spec = text.strip().lower()
    try:
        seconds = float(spec)
    except ValueError:
        parts = _PART.findall(spec)
        if not parts or "".join(n + u for n, u in parts) != spec:
            raise ValueError(f"not a duration: {text!r} (examples: 300, 90s, 5m, 1h30m)") from None
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive (got {text!r})")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@dataclass(frozen=True)
class Speed:
    """Visits per second the pool sustained on a batch of real positions, and the fixed cost
    of one position (queueing, the root's evaluation, the answer) in seconds of throughput."""

    visits_per_second: float
    positions: int
    visits: int
    seconds: float

    def seconds_for(self, positions: int, visits: int) -> float:
        return positions * visits / self.visits_per_second


@dataclass(frozen=True)
class ReviewPlan:
    visits: int           # first pass, every position
    trust_visits: int     # second pass, around the largest swings
    checks: int           # how many moves the second pass can afford
    estimate: float       # seconds for both passes
    reason: str

    def describe(self) -> str:
        return self.reason


# The share of the budget the first pass may take when the second pass needs time too: the
# first pass finds the candidates, the second is what makes a flag worth reading.
FIRST_PASS_SHARE = 0.55
MIN_CHECKS = 5


def plan_review(positions: int, speed: Speed, seconds: float, trust_visits: int,
                wanted_checks: int) -> ReviewPlan:
    """The visits per position and the number of deeper checks that fit ``seconds``."""
    rate = speed.visits_per_second
    total = seconds * rate  # visits the budget buys
    all_trusted = positions * trust_visits
    if total >= all_trusted:
        visits = max(trust_visits, int(total / positions))
        return ReviewPlan(visits, trust_visits, 0, speed.seconds_for(positions, visits),
                          f"{counted(visits, 'visit')} per position: every move is searched deep enough "
                          f"(≥ {counted(trust_visits, 'visit')}) to be judged")
    # A check re-searches the positions before and after one move; neighbouring checks share one.
    per_check = 2 * trust_visits
    first = max(positions, int(total * FIRST_PASS_SHARE))
    visits = max(1, first // positions)
    left = total - visits * positions
    checks = min(wanted_checks, max(0, int(left // per_check)))
    if checks < min(MIN_CHECKS, wanted_checks) and visits > 1:
        # Too few checks to be useful: give the first pass fewer visits.
        visits = max(1, int((total - min(MIN_CHECKS, wanted_checks) * per_check) // positions))
        left = total - visits * positions
        checks = min(wanted_checks, max(0, int(left // per_check)))
    estimate = (visits * positions + checks * per_check) / rate
    if checks == 0:
        over = estimate > seconds * 1.05
        least = ", the least a review can do" if over else ""
        reason = (f"{counted(visits, 'visit')} per position{least}; no time left to search the "
                  f"largest swings at {counted(trust_visits, 'visit')}, so no move will be "
                  "flagged as a mistake (give more time for that)")
    else:
        swings = "the largest swing" if checks == 1 else f"the {checks} largest swings"
        reason = (f"{counted(visits, 'visit')} per position, then {swings} re-searched at "
                  f"{counted(trust_visits, 'visit')}")
    return ReviewPlan(visits, trust_visits, checks, estimate, reason)
