"""How a pool watches and restarts its members; every number is a setting.

Configuration, not pool code: the pool file (`poolfile`) reads it, and config never imports
the pool (docs/design.md, data flow)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class PoolPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Health: three levels, each with its own interval and deadline (seconds).
    alive_interval: float = Field(default=0.5, gt=0, description="seconds between checks "
                                  "that each member's process is still alive")
    responsive_interval: float = Field(default=5.0, gt=0, description="seconds between "
                                       "query_version pings to each member")
    responsive_deadline: float = Field(default=10.0, gt=0, description="seconds a ping may go "
                                       "unanswered before the member is restarted")
    functional_interval: float = Field(default=15.0, gt=0, description="seconds between "
                                       "1-visit canary analyses on each member")
    functional_deadline: float = Field(default=60.0, gt=0, description="seconds a canary may go "
                                       "unanswered, with no analysis coming out, before "
                                       "the member is restarted")
    heartbeat_every: float = Field(default=5.0, gt=0, description="members report searches in "
                                   "progress this often, so a long search proves itself alive; "
                                   "callers only see the partial results they asked for")
    canary_board_size: int = Field(default=9, ge=7, le=19, description="board size of the "
                                   "canary position (small: cheap)")

    # Start-up: TensorRT builds take minutes.
    start_timeout: float = Field(default=900.0, gt=0, description="seconds a member may take "
                                 "to become ready (TensorRT builds take minutes)")

    # Restarts: exponential backoff and a windowed crash budget.
    backoff_initial: float = Field(default=0.25, ge=0, description="seconds before the first "
                                   "restart of a dead member; doubles with each death")
    backoff_max: float = Field(default=30.0, ge=0, description="longest wait (seconds) "
                               "between restarts")
    backoff_reset_after: float = Field(default=60.0, gt=0, description="seconds ready without "
                                       "dying that reset the backoff")
    crash_budget: int = Field(default=5, ge=1, description="deaths allowed within crash_window; "
                              "one more and the member is marked failed")
    crash_window: float = Field(default=300.0, gt=0, description="seconds over which "
                                "crash_budget counts deaths")

    # Queries.
    max_outstanding: int = Field(default=10_000, ge=1, description="queries in the pool before refusing")
    query_deadline: float | None = Field(default=None, gt=0, description="if set, any query "
                                         "still unfinished this long is terminated")
    queue_timeout: float | None = Field(default=300.0, gt=0, description="a query that no "
                                        "member could take this long (all still starting, "
                                        "restarting after crashes) gets an error; None: no "
                                        "limit")
    deadline_grace: float = Field(default=60.0, gt=0, description="a query with a time limit "
                                  "(overrideSettings.maxTime) is overdue this long after "
                                  "maxTime x its turns")
    terminate_grace: float = Field(default=15.0, gt=0, description="a terminated query still silent "
                                   "this long marks its member stuck")
    quarantine_after: int = Field(default=3, ge=1, description="member deaths while a query was in "
                                  "flight before it is refused as poison")
    split_min_turns: int = Field(default=4, ge=1, description="a query with at least twice "
                                 "this many turns is split over members, this many or more each")
    affinity_slack: float = Field(default=1.5, ge=1.0, description="how much busier than the least-"
                                  "loaded member a game's member may be and still get its query")

    # Reload (rolling restart).
    reload_drain: float = Field(default=5.0, ge=0, description="a member being replaced "
                                "finishes its work for up to this long; what is left moves "
                                "to other members (KataGo queues all it is sent, so waiting "
                                "for everything could take as long as the whole backlog)")

    # Shutdown.
    stop_grace: float = Field(default=10.0, ge=0, description="seconds a stopping member may "
                              "take to exit before it is killed")


def policy_help() -> list[tuple[str, str, str]]:
    """Every setting as (key, default, meaning), in declaration order, for ``--policy help``."""
    rows = []
    for name, info in PoolPolicy.model_fields.items():
        default = info.get_default(call_default_factory=True)
        limits = [f"{op} {getattr(m, attr)}" for m in info.metadata
                  for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))
                  if getattr(m, attr, None) is not None]
        meaning = " ".join((info.description or "").split())
        if limits:
            meaning += f" ({', '.join(limits)})"
        rows.append((name, "none" if default is None else str(default), meaning))
    return rows
