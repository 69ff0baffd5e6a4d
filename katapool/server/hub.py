"""What every daemon endpoint talks to: named pools (one per model) and the daemon's limits.

A *connection* is one client (a Unix-socket stream, a WebSocket). It speaks KataGo's analysis
JSON lines plus one optional query field, ``"model"``, naming which served network answers;
limits (visits, per-connection concurrency) are checked here, so an offending query gets an
error in KataGo's format and nobody else notices. When a connection goes, its queries are
terminated in the engines.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import psutil

from katapool.config.poolfile import Limits, ModelSpec, PoolFile
from katapool.errors import KatapoolError
from katapool.pool import Pool, PoolPolicy, Session
from katapool.pool.view import percentiles
from katapool.protocol.analysis import BadRequest, Request, error_response, is_final, parse_request

log = logging.getLogger(__name__)

Deliver = Callable[[dict[str, Any]], None]
HangUp = Callable[[], Awaitable[None]]
PoolBuilder = Callable[[str, ModelSpec], Pool]
CONTROL_ACTIONS = ("katapool_status", "katapool_stop", "katapool_reload")
HANG_UP_TIMEOUT = 5.0  # seconds for clients to acknowledge the daemon's goodbye


@dataclass
class Served:
    """One model name and the pool serving it (a reload may swap the pool)."""

    name: str
    spec: ModelSpec
    pool: Pool
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2048))


class Hub:
    def __init__(self, pool_file: PoolFile, build: PoolBuilder) -> None:
        self.file = pool_file
        self.limits: Limits = pool_file.limits
        self.build = build
        self.served: dict[str, Served] = {}
        self.retiring: list[Pool] = []  # replaced pools finishing their queries
        self.connections: set[Connection] = set()
        self.started = time.time()
        self.outcomes: dict[tuple[str, str], int] = {}
        self.control: Callable[[str, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]] | None = None
        self.on_latency: Callable[[str, float], None] | None = None
        self.ready = asyncio.Event()
        self.stopping = False  # draining: new queries are refused
        self._rates: dict[tuple[str, int], tuple[float, int, float]] = {}

    # --- life ---------------------------------------------------------------------------------

    def build_all(self) -> None:
        """Build every model's pool (not yet started: queries sent now wait for a member)."""
        for name, spec in self.file.models.items():
            if name not in self.served:
                self.served[name] = Served(name, spec, self.build(name, spec))

    async def start(self) -> None:
        self.build_all()
        # Every model's members start together (the supervisor staggers engine starts).
        await asyncio.gather(*(s.pool.start(wait="any") for s in self.served.values()))
        self.ready.set()

    async def close(self) -> None:
        self.ready.clear()
        connected = list(self.connections)
        for conn in connected:
            conn.close()
        # Tell clients still connected that the daemon is going (a WebSocket's close code
        # 1001, a Unix socket's end of stream) instead of leaving them to be cut off when the
        # event loop ends (a WebSocket then reads 1011, "internal error").
        hang_ups = [asyncio.ensure_future(c.hang_up()) for c in connected if c.hang_up]
        if hang_ups:
            await asyncio.wait(hang_ups, timeout=HANG_UP_TIMEOUT)
        await asyncio.gather(*(s.pool.close() for s in self.served.values()),
                             *(p.close() for p in self.retiring), return_exceptions=True)

    async def drain(self, timeout: float) -> bool:
        """Wait until no query is in flight anywhere (True), or ``timeout``."""
        waits = [s.pool.drain() for s in self.served.values()] + [p.drain() for p in self.retiring]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
            return True
        except TimeoutError:
            return False

    def live_pools(self) -> set[Pool]:
        return {s.pool for s in self.served.values()}

    def default_model(self) -> str:
        return self.file.default_model or next(iter(self.served))

    # --- reload -------------------------------------------------------------------------------

    async def reload(self, new_file: PoolFile) -> dict[str, str]:
        """Apply a new pool file without dropping a query: a model whose settings, engine
        setting and files (engine binary, network, configs) are unchanged keeps running as it
        is (only new policy values apply); a changed one whose member count is unchanged
        gets a rolling restart; a new or resized one gets a fresh pool that takes
        new queries once ready, while the old one finishes its own; a removed one stops
        taking queries and closes when done. A model whose new members cannot start keeps
        serving as before (its entry in the result says why)."""
        done: dict[str, str] = {}
        self.limits = new_file.limits
        for name, spec in new_file.models.items():
            current = self.served.get(name)
            if current is not None and current.spec == spec and new_file.engine == self.file.engine \
                    and not await asyncio.to_thread(current.pool.sources_changed):
                # Same settings, same files: a restart would only cost warm caches.
                _apply_policy(current.pool, pool_policy(new_file))
                done[name] = "unchanged"
                continue
            # Building probes the engine and the devices (seconds, up to minutes for a
            # wrapper or a cold disk): off the event loop, which keeps serving meanwhile.
            fresh = await asyncio.to_thread(self.build, name, spec)
            if current is not None and fresh.size == current.pool.size:
                _apply_policy(current.pool, fresh.policy)
                try:
                    ok = await current.pool.reload(fresh.factories(), new_file.policy.reload_drain)
                except BaseException:
                    await fresh.close()
                    raise
                if not ok:
                    await fresh.close()  # its generated files; the old ones stay in use
                    failed = [m.last_cause for m in current.pool.members() if m.last_cause]
                    done[name] = ("new members failed to start; still serving the previous "
                                  f"settings ({failed[-1] if failed else 'no cause reported'})")
                    continue
                current.pool.adopt(fresh)
                current.spec = spec
                done[name] = "restarted member by member"
                continue
            try:
                await fresh.start(wait="any")  # closes itself if no member starts
            except KatapoolError as exc:
                done[name] = f"new pool failed to start; {'unchanged' if current else 'not added'} ({exc})"
                continue
            self.served[name] = Served(name, spec, fresh)
            if current is not None:
                self._retire(current.pool)
                done[name] = "replaced by a new pool"
            else:
                done[name] = "added"
        for name in [n for n in self.served if n not in new_file.models]:
            self._retire(self.served.pop(name).pool)
            done[name] = "removed (finishing its queries)"
        self.file = new_file.model_copy(update={"models": {n: s.spec for n, s in self.served.items()}})
        return done

    def _retire(self, pool: Pool) -> None:
        self.retiring.append(pool)

        async def finish() -> None:
            await pool.drain()
            await pool.close()
            self.retiring.remove(pool)

        task = asyncio.create_task(finish())
        _background.add(task)
        task.add_done_callback(_background.discard)

    # --- numbers for status, the dashboard and /metrics ---------------------------------------

    def count(self, model: str, outcome: str) -> None:
        key = (model, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        models = []
        for served in self.served.values():
            members = []
            for member in served.pool.members():
                info = member.status()
                info["rss_mb"] = _rss_mb(member.pid) if member.local else None
                info["in_flight"] = member.in_flight
                info["visits"] = member.visits_done
                info["visits_per_s"] = self._rate(served.name, member.index, member.visits_done,
                                                  now)
                info["p50_s"], info["p99_s"] = _rounded(member.latency_p50_s,
                                                        member.latency_p99_s)
                members.append(info)
            counters = served.pool.counters()
            p50, p99 = _rounded(*percentiles(served.latencies))
            models.append({
                "name": served.name, "default": served.name == self.default_model(),
                "members": members, "queue": counters.outstanding, "waiting": counters.waiting,
                "oldest_waiting_s": _rounded(counters.oldest_waiting_s, digits=1)[0],
                "oldest_query_s": _rounded(counters.oldest_query_s, digits=1)[0],
                "router": dict(counters.events), "p50_s": p50, "p99_s": p99,
            })
        return {"ready": self.ready.is_set(), "uptime_s": round(time.time() - self.started, 1),
                "connections": len(self.connections), "models": models,
                "outcomes": {f"{m}/{o}": n for (m, o), n in sorted(self.outcomes.items())}}

    def _rate(self, model: str, index: int, visits: int, now: float) -> float:
        """Visits per second since the previous look (smoothed), per member."""
        key = (model, index)
        last = self._rates.get(key)
        if last is None:
            self._rates[key] = (now, visits, 0.0)
            return 0.0
        then, before, rate = last
        if now - then >= 1.0:
            fresh = (visits - before) / (now - then)
            rate = fresh if rate == 0.0 else 0.5 * rate + 0.5 * fresh
            self._rates[key] = (now, visits, rate)
        return round(rate, 1)

    def connect(self, deliver: Deliver, peer: str, control: bool = False,
                hang_up: HangUp | None = None) -> Connection:
        """A new client; ``hang_up`` closes its transport when the daemon stops."""
        conn = Connection(self, deliver, peer, control, hang_up)
        limit = self.limits.max_connections
        if len(self.connections) >= limit:
            # Over the limit: no queries (each gets this error), but the daemon's own controls
            # still work, so `katapool status` can show why.
            conn.refused = (f"too many connections: this server takes {limit} at once "
                            "(limits.max_connections); try again later")
        self.connections.add(conn)
        return conn


_VISIT_KEYS = re.compile(r"^max(Visits|Playouts)\d*$")


def _over_visit_limit(raw: dict[str, Any], limit: int) -> tuple[str, str] | None:
    """(field, message) if the query asks more visits than ``limit`` anywhere KataGo would
    read them: ``maxVisits``, or ``overrideSettings`` keys ``maxVisits``/``maxVisits0``/
    ``maxPlayouts…``, numbers or numeric strings."""
    candidates: list[tuple[str, Any]] = [("maxVisits", raw.get("maxVisits"))]
    settings = raw.get("overrideSettings")
    if isinstance(settings, dict):
        candidates += [(f"overrideSettings.{k}", v) for k, v in settings.items()
                       if isinstance(k, str) and _VISIT_KEYS.match(k)]
    for where, value in candidates:
        if value is None:
            continue
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = None
        if number is None:
            return where.split(".")[-1], f"{where} must be a number of visits"
        if number > limit:
            return where.split(".")[-1], (f"{where} {number:g} is over this server's limit of "
                                          f"{limit} visits per query")
    return None


def pool_policy(pool_file: PoolFile) -> PoolPolicy:
    """The policy of a pool file's pools: its own, with the queue limit from ``limits``."""
    return pool_file.policy.model_copy(update={"max_outstanding": pool_file.limits.max_queue})


def _apply_policy(pool: Pool, policy: PoolPolicy) -> None:
    """New policy values for a running pool (its router and supervisor share the object)."""
    for name in PoolPolicy.model_fields:
        setattr(pool.policy, name, getattr(policy, name))


def _rounded(*values: float | None, digits: int = 3) -> tuple[float | None, ...]:
    return tuple(None if v is None else round(v, digits) for v in values)


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except psutil.Error:
        return None


_background: set[asyncio.Task[Any]] = set()
FANOUT_MARK = "\x1fkp"


class Connection:
    """One client of the daemon; its queries, whatever model answers them."""

    _fanouts = itertools.count(1)

    def __init__(self, hub: Hub, deliver: Deliver, peer: str, control: bool,
                 hang_up: HangUp | None = None) -> None:
        self.hub = hub
        self._deliver = deliver
        self.peer = peer
        self.control = control
        self.closed = False
        self.sessions: dict[Pool, tuple[str, Session]] = {}  # pool -> (model, session)
        self._accepted: dict[str, deque[list[float]]] = {}  # query id -> [start, turns left]
        self._fanout: dict[str, tuple[dict[str, Any], int, list[dict[str, Any]]]] = {}
        self._controls = 0
        self.refused: str | None = None  # why this connection may send no queries
        self.hang_up = hang_up  # closes its transport when the daemon stops

    # --- in ------------------------------------------------------------------------------------

    def submit(self, line: str) -> None:
        if self.closed:
            return
        try:
            request = parse_request(line.rstrip("\r\n"), CONTROL_ACTIONS)
        except BadRequest as exc:
            self.hub.count("-", "rejected")
            self.deliver(exc.response)
            return
        raw = request.raw
        if request.action in CONTROL_ACTIONS:  # katapool's own, answered by the daemon
            self._control(request)
            return
        if self.refused is not None:
            self._reject(request, self.refused)
            self.close()
            return
        if request.action == "query_version":
            self._session(self.hub.default_model()).submit_request(request)
        elif request.action in ("terminate", "terminate_all"):
            target = raw["terminateId"] if request.action == "terminate" else None
            for _, session in self.sessions.values():
                session.terminate(target, request.turn_numbers)
            self.deliver(dict(raw))
        elif request.action in ("clear_cache", "query_models"):
            self._fan_out(request)
        else:
            self._analysis(request)

    def _analysis(self, request: Request) -> None:
        raw = request.raw
        model = raw.pop("model", None)
        if model is None:
            model = self.hub.default_model()
        if not isinstance(model, str) or model not in self.hub.served:
            self._reject(request, f"unknown model {model!r}: this server has "
                         f"{', '.join(sorted(self.hub.served))}", "model")
            return
        limits = self.hub.limits
        if self.hub.stopping:
            self._reject(request, "katapool is stopping: it finishes the queries it has and "
                         "takes no new ones")
            return
        if limits.max_visits is not None:
            over = _over_visit_limit(raw, limits.max_visits)
            if over is not None:
                self._reject(request, over[1], over[0])
                return
        in_flight = self.in_flight()
        if in_flight >= limits.per_client_concurrency:
            self._reject(request, f"too many queries in flight on this connection ({in_flight}; "
                         f"limit {limits.per_client_concurrency}): wait for answers first")
            return
        served = self.hub.served[model]
        if served.pool.outstanding >= limits.max_queue:
            self._reject(request, f"katapool is busy: {served.pool.outstanding} queries "
                         f"queued for model {model!r} (max_queue {limits.max_queue}); "
                         "send it again later")
            return
        self._accepted.setdefault(request.id, deque()).append([time.monotonic(), len(request.turns)])
        self._session(model).submit_request(request)

    def _reject(self, request: Request, message: str, field: str | None = None) -> None:
        self.hub.count("-", "rejected")
        self.deliver(error_response(message, request.id, field))

    def _session(self, model: str) -> Session:
        pool = self.hub.served[model].pool
        entry = self.sessions.get(pool)
        if entry is None:
            # Sessions on pools a reload retired are dropped once they are done.
            for old in [p for p, (_, s) in self.sessions.items()
                        if not s.in_flight and p not in self.hub.live_pools()]:
                self.sessions.pop(old)[1].close()
            entry = self.sessions[pool] = (model, pool.session(
                functools.partial(self._from_pool, model)))
        return entry[1]

    def _fan_out(self, request: Request) -> None:
        """clear_cache and query_models concern every model: ask each, answer once."""
        key = f"{request.id}{FANOUT_MARK}{next(self._fanouts)}"
        names = list(self.hub.served)
        self._fanout[key] = (dict(request.raw), len(names), [])
        for name in names:
            self._session(name).submit_request(
                Request({**request.raw, "id": f"{key}:{name}"}, f"{key}:{name}", request.action))

    def _fanout_reply(self, model: str, msg: dict[str, Any]) -> None:
        key = str(msg["id"]).rsplit(":", 1)[0]
        entry = self._fanout.get(key)
        if entry is None:
            return
        raw, expected, replies = entry
        replies.append({**msg, "_model": model})
        if len(replies) < expected:
            return
        del self._fanout[key]
        errors = [r for r in replies if "error" in r]
        if errors:
            self.deliver({**{k: v for k, v in errors[0].items() if k != "_model"}, "id": raw["id"]})
            return
        answer = dict(raw)
        if raw.get("action") == "query_models":
            answer["models"] = [{**m, "katapoolModel": r["_model"]}
                                for r in replies for m in r.get("models", [])]
        self.deliver(answer)

    def _control(self, request: Request) -> None:
        if not self.control or self.hub.control is None:
            self.deliver(error_response(f"{request.raw['action']} is only accepted on the "
                                        "daemon's Unix socket", request.id, "action"))
            return
        work = self.hub.control(str(request.raw["action"]), request.raw)
        task: asyncio.Task[dict[str, Any]] = asyncio.create_task(work)

        def answer(t: asyncio.Task[dict[str, Any]]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            reply = error_response(str(exc), request.id) if exc else {**t.result(), "id": request.id}
            self.deliver(reply)

        self._controls += 1

        def done(t: asyncio.Task[dict[str, Any]]) -> None:
            self._controls -= 1
            answer(t)

        task.add_done_callback(done)
        _background.add(task)
        task.add_done_callback(_background.discard)

    # --- out -----------------------------------------------------------------------------------

    def _from_pool(self, model: str, msg: dict[str, Any]) -> None:
        rid = msg.get("id")
        if isinstance(rid, str) and FANOUT_MARK in rid and rid.rsplit(":", 1)[0] in self._fanout:
            self._fanout_reply(model, msg)
            return
        if "error" in msg:
            self.hub.count(model, "error")
            if isinstance(rid, str):
                self._settle(model, rid, all_turns=True)
        elif is_final(msg) and "turnNumber" in msg:
            self.hub.count(model, "no_results" if msg.get("noResults") else "answered")
            if isinstance(rid, str):
                self._settle(model, rid, all_turns=False)
        self.deliver(msg)

    def _settle(self, model: str, rid: str, all_turns: bool) -> None:
        entries = self._accepted.get(rid)
        if not entries:
            return
        entry = entries[0]
        latency = time.monotonic() - entry[0]
        served = self.hub.served.get(model)
        if served is not None and not all_turns:
            served.latencies.append(latency)
        if self.hub.on_latency is not None and not all_turns:
            self.hub.on_latency(model, latency)
        entry[1] -= 1
        if all_turns or entry[1] <= 0:
            entries.popleft()
            if not entries:
                del self._accepted[rid]

    def deliver(self, msg: dict[str, Any]) -> None:
        if not self.closed:
            try:
                self._deliver(msg)
            except Exception:  # a broken transport must not reach into the router
                log.exception("connection %s: could not deliver", self.peer)
                self.close()

    def in_flight(self) -> int:
        return sum(s.in_flight for _, s in self.sessions.values()) + len(self._fanout) + self._controls

    def close(self) -> None:
        """The client went away: stop its queries in the engines; late answers are dropped."""
        if self.closed:
            return
        self.closed = True
        for _, session in self.sessions.values():
            session.close()
        self.hub.connections.discard(self)
