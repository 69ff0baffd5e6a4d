"""KataGo's analysis responses as typed objects.

Field names follow Python style; the aliases are KataGo's own (``moveInfos``, ``rootInfo``,
``scoreLead``, ...), so KataGo's documentation explains every field. Unknown fields are kept.
The client asks KataGo to report values from Black's view; the ``*_for(color)`` helpers give
either player's, so perspective mistakes cannot happen.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Color = Literal["B", "W"]


class _KataGo(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow", frozen=True)


def _flip(value: float, color: Color, kind: Literal["winrate", "score"]) -> float:
    side = str(color).strip().upper()[:1]
    if side not in ("B", "W"):
        raise ValueError(f"colour {color!r}: expected 'B' or 'W'")
    if side == "B":
        return value
    return 1.0 - value if kind == "winrate" else -value


class MoveInfo(_KataGo):
    """One candidate move, from Black's view."""

    move: str
    visits: int
    winrate: float
    score_lead: float = Field(alias="scoreLead")
    score_mean: float | None = Field(default=None, alias="scoreMean")
    score_stdev: float | None = Field(default=None, alias="scoreStdev")
    prior: float = 0.0
    utility: float | None = None
    lcb: float | None = None
    order: int = 0
    pv: list[str] = Field(default_factory=list)
    ownership: list[float] | None = None

    def winrate_for(self, color: Color) -> float:
        return _flip(self.winrate, color, "winrate")

    def score_lead_for(self, color: Color) -> float:
        return _flip(self.score_lead, color, "score")


class RootInfo(_KataGo):
    """The position itself, from Black's view."""

    visits: int
    winrate: float
    score_lead: float = Field(alias="scoreLead")
    score_stdev: float | None = Field(default=None, alias="scoreStdev")
    utility: float | None = None
    current_player: Color | None = Field(default=None, alias="currentPlayer")
    raw_winrate: float | None = Field(default=None, alias="rawWinrate")
    raw_lead: float | None = Field(default=None, alias="rawLead")

    def winrate_for(self, color: Color) -> float:
        return _flip(self.winrate, color, "winrate")

    def score_lead_for(self, color: Color) -> float:
        return _flip(self.score_lead, color, "score")


class QueryWarning(_KataGo):
    """KataGo's note about a query it still answered, e.g. an unknown field or a mistyped
    setting: ``{"warning": "Unknown config params: wideRootNoize", "field": "overrideSettings"}``."""

    message: str = Field(alias="warning")
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.message} (field {self.field})" if self.field else self.message


class Analysis(_KataGo):
    """One response: a final result (``is_during_search`` False) or a partial one.

    >>> a = Analysis.model_validate({"id": "q", "turnNumber": 0, "isDuringSearch": False,
    ...     "rootInfo": {"visits": 10, "winrate": 0.6, "scoreLead": 2.5},
    ...     "moveInfos": [{"move": "Q16", "visits": 10, "winrate": 0.6, "scoreLead": 2.5}]})
    >>> a.best_move, round(a.root_info.winrate_for("W"), 2), a.root_info.score_lead_for("W")
    ('Q16', 0.4, -2.5)
    """

    id: str
    turn_number: int = Field(alias="turnNumber")
    is_during_search: bool = Field(default=False, alias="isDuringSearch")
    no_results: bool = Field(default=False, alias="noResults")
    move_infos: list[MoveInfo] = Field(default_factory=list, alias="moveInfos")
    root_info: RootInfo | None = Field(default=None, alias="rootInfo")
    ownership: list[float] | None = None
    ownership_stdev: list[float] | None = Field(default=None, alias="ownershipStdev")
    policy: list[float] | None = None
    human_policy: list[float] | None = Field(default=None, alias="humanPolicy")
    warnings: list[QueryWarning] = Field(default_factory=list, exclude=True,
                                         description="KataGo's warnings about the query (not "
                                         "part of the response itself)")

    @property
    def best_move(self) -> str | None:
        if not self.move_infos:
            return None
        return min(self.move_infos, key=lambda m: m.order).move

    @property
    def visits(self) -> int:
        return self.root_info.visits if self.root_info else 0

    def raw(self) -> dict[str, Any]:
        """The response as KataGo wrote it."""
        return self.model_dump(by_alias=True, exclude_none=True)
