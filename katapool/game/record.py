"""A game record reduced to what KataGo's analysis queries need."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgfmill import sgf, sgf_grammar

from katapool.errors import GameRecordError

GTP_COLUMNS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"

_RULES = {
    "japanese": "japanese", "jp": "japanese", "korean": "korean", "chinese": "chinese",
    "cn": "chinese", "aga": "aga", "nz": "new-zealand", "new zealand": "new-zealand",
    "tromp-taylor": "tromp-taylor", "tt": "tromp-taylor",
}


def to_gtp(point: tuple[int, int] | None, size: int) -> str:
    """sgfmill's (row, col), row 0 at the bottom, to GTP notation (``pass`` for None)."""
    if point is None:
        return "pass"
    row, col = point
    if not (0 <= row < size and 0 <= col < size):
        raise GameRecordError(f"point {point} is off a {size}x{size} board")
    return f"{GTP_COLUMNS[col]}{row + 1}"


@dataclass
class GameRecord:
    size: int
    komi: float
    rules: str
    moves: list[tuple[str, str]]  # ("B"|"W", GTP vertex or "pass")
    initial_stones: list[tuple[str, str]] = field(default_factory=list)
    initial_player: str | None = None
    black: str = "Black"
    white: str = "White"
    result: str | None = None
    # The file as it was read: the annotated copy is made from it, not from a file the user
    # may have edited, moved or deleted during a long review.
    sgf_bytes: bytes = field(default=b"", repr=False, compare=False)
    # What was read in place of what the file says (an unknown RU): the command shows these on
    # stderr, so a review under other rules than the file's never passes unnoticed.
    warnings: list[str] = field(default_factory=list, repr=False, compare=False)

    def query(self, **extra: Any) -> dict[str, Any]:
        """A KataGo analysis query for the whole game (``analyzeTurns`` is up to the caller)."""
        q: dict[str, Any] = {
            "moves": [[c, m] for c, m in self.moves],
            "rules": self.rules,
            "komi": self.komi,
            "boardXSize": self.size,
            "boardYSize": self.size,
        }
        if self.initial_stones:
            q["initialStones"] = [[c, m] for c, m in self.initial_stones]
        if self.initial_player:
            q["initialPlayer"] = self.initial_player
        q.update(extra)
        return q


def load_sgf(path: Path) -> GameRecord:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GameRecordError(f"cannot read {path}: {exc.strerror}") from None
    return parse_sgf(data, str(path))


def parse_sgf(data: bytes, source: str = "<sgf>") -> GameRecord:
    try:
        record = _parse(data, source)
        record.sgf_bytes = data
        return record
    except GameRecordError:
        raise
    except (ValueError, KeyError, IndexError) as exc:
        raise GameRecordError(f"{source}: not a readable SGF game ({exc or 'bad property value'})") from None


# Chinese records that say GB2312 are mostly written in GBK (names such as 李喆 are not in
# GB2312): GB18030 reads both, and every GB2312 file the same.
_WIDER_CHARSETS = {"gb2312": "GB18030", "gbk": "GB18030", "cp936": "GB18030"}


def read_sgf_game(data: bytes) -> sgf.Sgf_game:
    """sgfmill's game tree, text decoded the way the file's author meant: a GB2312 file as
    GB18030 (above), and a file with no CA that is valid UTF-8 as UTF-8 (the SGF default,
    Latin-1, would turn every CJK name into mojibake)."""
    game = sgf.Sgf_game.from_bytes(data)
    root = game.get_root()
    if root.has_property("CA"):
        declared = root.get_raw("CA").decode("ascii", "replace").strip().lower()
        override = _WIDER_CHARSETS.get(declared)
    else:
        try:
            data.decode("utf-8")
            override = "UTF-8"
        except UnicodeDecodeError:
            override = None
    return game if override is None else sgf.Sgf_game.from_bytes(data, override_encoding=override)


def _parse(data: bytes, source: str) -> GameRecord:
    game = read_sgf_game(data)
    count = len(sgf_grammar.parse_sgf_collection(data))
    if count > 1:  # sgfmill reads the first and drops the rest without a word
        raise GameRecordError(f"{source}: the file holds {count} games; katapool reviews one "
                              "game per file (split the collection, e.g. in Sabaki or KaTrain)")
    size = game.get_size()
    if size > 19:
        raise GameRecordError(f"{source}: board size {size} is larger than KataGo's 19")
    root = game.get_root()
    # sgfmill reads a missing KM as 0: an even game would be reviewed without komi.
    komi = game.get_komi() if root.has_property("KM") else None
    rules_prop = root.get("RU").strip().lower() if root.has_property("RU") else ""
    rules = _RULES.get(rules_prop, "japanese" if "japan" in rules_prop else "chinese")
    warnings = []
    if rules_prop and rules_prop not in _RULES and "japan" not in rules_prop:
        warnings.append(f"{source}: unknown rules RU[{root.get('RU').strip()}]; "
                        f"using {rules} rules")
    initial: list[tuple[str, str]] = []
    moves: list[tuple[str, str]] = []
    to_play: str | None = None
    for number, node in enumerate(game.get_main_sequence()):
        black, white, empty = node.get_setup_stones()
        if black or white or empty:
            if moves:
                raise GameRecordError(
                    f"{source}: stones are added or removed after move {len(moves)} "
                    f"(node {number}); KataGo's analysis takes setup only before the first move"
                )
            if empty:
                raise GameRecordError(f"{source}: setup removes stones (AE), which KataGo cannot replay")
            initial += [("B", to_gtp(p, size)) for p in sorted(black)]
            initial += [("W", to_gtp(p, size)) for p in sorted(white)]
        if not moves and node.has_property("PL"):
            to_play = node.get("PL").upper()
        try:
            colour, point = node.get_move()
        except ValueError:
            raw = next((node.get_raw(c) for c in ("B", "W") if node.has_property(c)), b"")
            raise GameRecordError(f"{source}: move {len(moves) + 1} (node {number}) is "
                                  f"{raw.decode('ascii', 'replace')!r}, not a point of a "
                                  f"{size}x{size} board") from None
        if colour is not None:
            moves.append((colour.upper(), to_gtp(point, size)))
    first = moves[0][0] if moves else to_play
    handicap = root.get_raw("HA").strip() if root.has_property("HA") else b""
    if handicap.isdigit() and int(handicap) >= 2 and not initial and first == "W":
        # White first on an empty board: the stones were left out, and every winrate would be
        # an even game's.
        raise GameRecordError(f"{source}: HA[{int(handicap)}] but no handicap stones (AB) and "
                              "White moves first; add the stones as AB setup")
    if komi is not None and abs(komi) > size * size:
        raise GameRecordError(f"{source}: komi KM[{root.get_raw('KM').decode('ascii', 'replace')}] "
                              f"is more than the {size}x{size} board's {size * size} points "
                              "(some Chinese records write 375 for 3¾ stones, 7.5 points: "
                              "correct the KM)")
    if komi is not None and komi * 2 != int(komi * 2):
        raise GameRecordError(f"{source}: komi KM[{root.get_raw('KM').decode('ascii', 'replace')}] "
                              "is not a whole or half point, the only komi KataGo plays with")
    return GameRecord(
        size=size, komi=float(komi if komi is not None else _default_komi(rules, initial, first)),
        rules=rules, moves=moves,
        initial_stones=initial, initial_player=first if (initial or to_play) else None,
        black=root.get("PB") if root.has_property("PB") else "Black",
        white=root.get("PW") if root.has_property("PW") else "White",
        result=root.get("RE") if root.has_property("RE") else None,
        warnings=warnings,
    )


def _default_komi(rules: str, initial: list[tuple[str, str]], first: str | None) -> float:
    """Komi for a record without KM: 0.5 for a handicap game (Black's stones set up, White
    first), else the usual komi of the rules (6.5 territory scoring, 7.5 area)."""
    if initial and first == "W" and all(colour == "B" for colour, _ in initial):
        return 0.5
    return 6.5 if rules in ("japanese", "korean") else 7.5
