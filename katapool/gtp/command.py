"""GTP command lines as KataGo reads them, and which commands stream.

Preprocessing follows KataGo's command loop (itself GTP 2 §3.1): drop bytes that are not
printable ASCII or TAB, cut at ``#``, tabs to spaces, trim. Leading digits are the id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Header "=id", then info lines, ended by a blank line when any new input line arrives.
INTERRUPTIBLE = frozenset({"lz-analyze", "kata-analyze", "analyze",
                           "kata-search_cancellable", "kata-search_analyze_cancellable"})
# Header "=id", info lines, "play X", blank line; they finish on their own.
SELF_ENDING_STREAMS = frozenset({"lz-genmove_analyze", "kata-genmove_analyze", "genmove_analyze",
                                 "kata-search_analyze"})
STREAMING = (INTERRUPTIBLE - {"kata-search_cancellable"}) | SELF_ENDING_STREAMS
# Commands that may take a whole search (no short answer deadline).
SEARCHES = INTERRUPTIBLE | SELF_ENDING_STREAMS | frozenset({
    "genmove", "kata-search", "kata-search_debug", "genmove_debug", "kata-benchmark",
    "kata-raw-nn", "kata-raw-human-nn", "final_score", "final_status_list", "loadsgf",
    # A new board size rebuilds the network's buffers (a TensorRT engine, minutes).
    "boardsize", "rectangular_boardsize"})
# Answers of one block per symmetry asked for, blank lines between them (KataGo's own framing,
# kept as it is): eight blocks for "all", else one.
RAW_NN = frozenset({"kata-raw-nn", "kata-raw-human-nn"})
SYMMETRIES = 8
ANALYZE_FAMILY = frozenset({"lz-analyze", "kata-analyze", "analyze", "lz-genmove_analyze",
                            "kata-genmove_analyze", "genmove_analyze", "kata-search_analyze",
                            "kata-search_analyze_cancellable"})

_NOT_PRINTABLE = re.compile(r"[^\x20-\x7e\t]")
_ID = re.compile(r"^(\d+)\s*(.*)$")


@dataclass(frozen=True)
class Command:
    raw: str  # the line as it goes to the engine (preprocessed)
    id: str | None
    name: str
    args: tuple[str, ...]

    @property
    def streams(self) -> bool:
        """Answered as a header line, then lines, then a blank line (not one response)."""
        return self.name in STREAMING

    @property
    def interruptible(self) -> bool:
        return self.name in INTERRUPTIBLE

    @property
    def answer_blocks(self) -> int:
        """Blank-separated blocks in a successful answer (all but the last blank line belong
        to it)."""
        if self.name in RAW_NN and any(a.lower() == "all" for a in self.args):
            return SYMMETRIES
        return 1

    @property
    def echo_id(self) -> str:
        """The id as KataGo writes it in its answer (as a number: ``007`` answers ``=7``)."""
        return str(int(self.id)) if self.id is not None and not self.id_only else ""

    @property
    def id_only(self) -> bool:
        """A bare id, or one KataGo cannot read (it takes at most 9 digits, leading zeros
        included): a one-line "?" answer."""
        return self.id is not None and (not self.name or len(self.id) > 9)


def preprocess(line: str) -> str:
    line = _NOT_PRINTABLE.sub("", line.strip())
    line = line.split("#", 1)[0]
    return line.replace("\t", " ").strip()


def parse(line: str) -> Command | None:
    """The command on a GUI line, or None for a line with none (empty, or only a comment)."""
    text = preprocess(line)
    if not text:
        return None
    cid = None
    found = _ID.match(text)
    if found:
        cid, text = found.group(1), found.group(2)
    words = text.split()
    name = words[0] if words else ""  # KataGo matches names exactly: `QUIT` is unknown
    return Command(f"{cid} {text}".strip() if cid is not None else text, cid, name, tuple(words[1:]))


def with_args(command: Command, args: list[str]) -> Command:
    text = " ".join([command.name, *args])
    raw = f"{command.id} {text}" if command.id is not None else text
    return Command(raw, command.id, command.name, tuple(args))
