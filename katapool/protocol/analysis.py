"""KataGo analysis-engine JSON lines: requests from callers, and errors in KataGo's format.

katapool checks only what it needs to route a request (a string ``id``, ``action``,
``moves`` and ``analyzeTurns``, from which it knows how many final responses are due); the
engine validates everything else and its own errors flow back to the caller. Unknown fields
pass through untouched: KataGo warns about them itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

ACTIONS = ("query_version", "query_models", "clear_cache", "terminate", "terminate_all")


def error_response(message: str, id: str | None = None, field: str | None = None) -> dict[str, Any]:
    """``{"error": ..., "field": ..., "id": ...}``, as KataGo writes it."""
    out: dict[str, Any] = {"error": message}
    if field is not None:
        out["field"] = field
    if id is not None:
        out["id"] = id
    return out


@dataclass
class Request:
    """One caller line, parsed just enough to route it."""

    raw: dict[str, Any]
    id: str
    action: str | None = None
    turns: list[int] = field(default_factory=list)  # unique, sorted: one final each
    turn_numbers: list[int] | None = None  # a terminate's turnNumbers, as the engine reads them

    @property
    def visits(self) -> int:
        value = self.raw.get("maxVisits")
        return value if isinstance(value, int) and value > 0 else 500


class BadRequest(Exception):
    """A line katapool must answer with an error instead of routing."""

    def __init__(self, response: dict[str, Any]) -> None:
        super().__init__(response["error"])
        self.response = response


class _NotFinite(ValueError):
    pass


def _no_constant(name: str) -> float:
    raise _NotFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def turn_list(value: Any) -> list[int] | None:
    """A list of turn numbers as KataGo reads one: any JSON number (or boolean) counts, cut
    to an integer toward zero (``1.0`` and ``1.7`` are turn 1). katapool must read them as the
    engine does: it counts the finals it is owed by them."""
    if not isinstance(value, list):
        return None
    if not all(isinstance(v, (int, float)) for v in value):
        return None
    return [int(v) for v in value]


def report_seconds(value: Any) -> float | None:
    """A ``reportDuringSearchEvery`` or ``firstReportDuringSearchAfter`` KataGo accepts (a
    number of seconds from 0.001 to 1000000), else None (the engine answers it with an error)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and 0.001 <= value <= 1_000_000:
        return float(value)
    return None


def parse_request(line: str, extra_actions: tuple[str, ...] = ()) -> Request:
    """Parse one caller line, or raise :class:`BadRequest` holding KataGo's error reply.
    ``extra_actions`` are accepted as they are (an interface's own, such as the daemon's)."""
    # A byte-order mark, as some writers put before their first line (.NET's UTF-8 encoder
    # does): KataGo's JSON parser skips it; Python's refuses it.
    line = line.removeprefix("\ufeff")
    try:
        obj = json.loads(line, parse_constant=_no_constant, parse_float=_finite_float)
    except _NotFinite as exc:
        raise BadRequest(error_response(
            f"{exc} is not a number JSON allows - could not parse input line as json request: "
            f"{line[:200]}")) from None
    except json.JSONDecodeError as exc:
        raise BadRequest(error_response(
            f"{exc.msg} at column {exc.colno} - could not parse input line as json request: "
            f"{line[:200]}")) from None
    if not isinstance(obj, dict):
        raise BadRequest(error_response(
            f"Request line was valid json but was not an object, ignoring: {line[:200]}"))
    rid = obj.get("id")
    if not isinstance(rid, str):
        raise BadRequest(error_response('Request must have a string "id" field'))
    action = obj.get("action")
    if isinstance(action, str):  # KataGo takes a line whose action is not a string as a query
        if action in extra_actions:
            return Request(obj, rid, action)
        if action not in ACTIONS:
            raise BadRequest(error_response(
                "'action' field must be " + " or ".join(f"'{a}'" for a in ACTIONS), rid, "action"))
        if action == "terminate" and not isinstance(obj.get("terminateId"), str):
            raise BadRequest(error_response(
                'Requests for a terminate action must have a string "terminateId" field',
                rid, "terminateId"))
        turn_numbers = None
        if action in ("terminate", "terminate_all") and "turnNumbers" in obj:
            turn_numbers = turn_list(obj["turnNumbers"])
            if turn_numbers is None:
                raise BadRequest(error_response(
                    "If provided, must be an array of integers indicating turns to terminate",
                    rid, "turnNumbers"))
        return Request(obj, rid, action, turn_numbers=turn_numbers)
    moves = obj.get("moves")
    if "moves" not in obj:
        raise BadRequest(error_response("Must specify an array of [player,location] pairs",
                                        rid, "moves"))
    if not isinstance(moves, list):  # KataGo words a present but wrong one otherwise
        raise BadRequest(error_response(
            'Must be an array of pairs of the form: ["b" or "w", GTP board vertex]', rid, "moves"))
    if "analyzeTurns" in obj:
        turns = turn_list(obj["analyzeTurns"])
        if turns is None:
            raise BadRequest(error_response(
                "Must specify an array of integers indicating turns to analyze", rid, "analyzeTurns"))
        bad = [t for t in turns if not 0 <= t <= len(moves)]
        if bad:
            raise BadRequest(error_response(f"Invalid turn number: {bad[0]}", rid, "analyzeTurns"))
        if not turns:
            # KataGo silently analyses nothing; an explicit answer is kinder than silence.
            raise BadRequest(error_response("analyzeTurns is empty: nothing to analyze",
                                            rid, "analyzeTurns"))
        unique = sorted(set(turns))
    else:
        unique = [len(moves)]
    return Request(obj, rid, None, unique)


def restrict_to_turns(payload: dict[str, Any], turns: list[int]) -> dict[str, Any]:
    """The same query asking only for ``turns`` (for re-sending unfinished work), keeping each
    turn's own priority."""
    out = dict(payload)
    original = turn_list(payload.get("analyzeTurns"))
    priorities = payload.get("priorities")
    out["analyzeTurns"] = list(turns)
    if original is not None and isinstance(priorities, list) and len(priorities) == len(original):
        by_turn = dict(zip(original, priorities, strict=True))
        out["priorities"] = [by_turn[t] for t in turns]
    return out


def is_final(message: dict[str, Any]) -> bool:
    """Every analysed turn ends with exactly one ``isDuringSearch: false`` response."""
    return message.get("isDuringSearch") is False
