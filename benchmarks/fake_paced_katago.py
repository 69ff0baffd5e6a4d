#!/usr/bin/env python3
"""FAKE ENGINE, named as such (not KataGo): speaks `katago analysis` with a fixed cost per turn,
for cluster tests and benchmarks where the engine's speed must be known and the router's or
Ray's behaviour is measured. One turn at a time, like one GPU: each takes FAKE_PACE_MS
(default 20) of wall time, in which it reports partial results when the query asked for
`reportDuringSearchEvery` (visits grow with time) and ends with one final response.
`terminate` / `terminate_all` end the named queries: the turn in progress gives its final
result at once, turns not started give `noResults` finals, as KataGo does. `version` answers
like a CPU build."""

import json
import os
import sys
import threading
import time
from collections import deque

if sys.argv[1:2] == ["version"]:
    print("KataGo v1.18.1\nGit revision: fake-paced\nUsing Eigen(CPU) backend")
    sys.exit(0)

PACE = float(os.environ.get("FAKE_PACE_MS", "20")) / 1000.0
lock = threading.Condition()
work: deque = deque()  # (query, turn)
stopped: set = set()  # ids terminated (KataGo ids are per query; katapool's are unique)
wake = threading.Event()  # a terminate arrived: the turn in progress looks again
out = sys.stdout
write_lock = threading.Lock()


def emit(obj: dict) -> None:
    with write_lock:
        out.write(json.dumps(obj, separators=(",", ":")) + "\n")
        out.flush()


def result(qid: object, turn: int, visits: int, final: bool) -> dict:
    return {"id": qid, "isDuringSearch": not final, "turnNumber": turn,
            "moveInfos": [{"move": "Q16", "order": 0, "visits": visits, "winrate": 0.5,
                           "scoreLead": 0.0, "prior": 0.1, "pv": ["Q16"]}],
            "rootInfo": {"visits": visits, "winrate": 0.5, "scoreLead": 0.0,
                         "currentPlayer": "B"}}


def worker() -> None:
    while True:
        with lock:
            while not work:
                lock.wait()
            query, turn = work.popleft()
        qid = query["id"]
        if qid in stopped:
            emit({"id": qid, "isDuringSearch": False, "turnNumber": turn, "noResults": True})
            continue
        every = query.get("reportDuringSearchEvery")
        started = time.monotonic()
        next_report = started + every if every else None
        visits = 1
        while True:
            now = time.monotonic()
            if now - started >= PACE or qid in stopped:
                break
            visits = 1 + int(100 * (now - started) / PACE)
            if next_report is not None and now >= next_report:
                emit(result(qid, turn, visits, False))
                next_report = now + every
            # Sleep to the next report or the end of the turn (no busy polling: the engine's own
            # CPU use must not be what a benchmark measures); a terminate wakes it early.
            until = started + PACE if next_report is None else min(started + PACE, next_report)
            wake.wait(max(0.0, until - time.monotonic()))
            wake.clear()
        emit(result(qid, turn, visits, True))


threading.Thread(target=worker, daemon=True).start()
print("Started, ready to begin handling requests", file=sys.stderr, flush=True)
for line in sys.stdin:
    q = json.loads(line)
    action = q.get("action")
    if action == "query_version":
        emit({**q, "version": "1.18.1", "git_hash": "fake-paced"})
    elif action in ("terminate", "terminate_all"):
        with lock:
            ids = {q.get("terminateId")} if action == "terminate" else \
                {w[0]["id"] for w in work}
            stopped |= ids
        wake.set()
        emit({"id": q["id"], "action": action, **({"terminateId": q["terminateId"]}
                                                  if action == "terminate" else {})})
    elif action is not None:
        emit({"id": q["id"], "action": action})
    else:
        turns = q.get("analyzeTurns") or [len(q.get("moves", []))]
        with lock:
            stopped.discard(q["id"])
            work.extend((q, t) for t in sorted(set(turns)))
            lock.notify()
