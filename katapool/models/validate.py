"""Check an ONNX export against the engine itself, position by position.

Inputs come from the engine (``katago evalsgf … -dump-npz-input-to``: the exact tensors it
feeds its own network); the engine's outputs from ``kata-raw-nn S 0`` in one GTP session
(symmetry S, default 0; optimism 0). The ONNX model's raw outputs get KataGo's post-processing (policy
softmax over the legal moves, value softmax, score scaling, ownership tanh, White's view) and
are compared with KataGo's limits for its own FP32 backends (``testgpuerror``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from katapool import paths
from katapool.errors import ConfigError, EngineError, GameRecordError, ModelError
from katapool.game.record import GameRecord, load_sgf
from katapool.models.desc import ModelDesc
from katapool.models.symmetry import apply_symmetry, invert_symmetry

# KataGo's FP32 limits (p99 over positions): winrate, lead (points), top-move policy, KL.
FP32_LIMITS = {"winrate": 0.0045, "lead": 0.34, "top_policy": 0.0045, "policy_kl": 0.0006}
FP16_LIMITS = {"winrate": 0.02, "lead": 1.0, "top_policy": 0.025, "policy_kl": 0.002}


@dataclass(frozen=True)
class Position:
    sgf: Path
    moves: int  # the position after this many moves
    size: int
    black_to_move: bool


@dataclass
class EngineEval:
    white_win: float
    white_lead: float
    policy: np.ndarray  # board points row-major from the top, then pass; NaN where illegal
    white_ownership: np.ndarray


@dataclass
class Report:
    positions: int
    errors: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> max, p99
    limits: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(self.errors[k]["p99"] <= v for k, v in self.limits.items())

    def as_dict(self) -> dict[str, Any]:
        return {"positions": self.positions, "passed": self.passed, "limits": self.limits,
                "errors": self.errors}


# katapool's temporary copies of games (see with_explicit_rules) -> the files the user named:
# what the engine says of a copy is said of the user's file.
_COPY_OF: dict[Path, Path] = {}


def game_as_given(path: Path) -> Path:
    """The user's file that ``path`` is a temporary copy of (``path`` itself if none)."""
    return _COPY_OF.get(path, path)


def as_given(text: str) -> str:
    """``text`` (an engine's message) with temporary copies of games named as the user's
    files: by path first, then by bare name (``000-game.sgf``)."""
    for copy, original in _COPY_OF.items():
        if copy.name in text:  # one pass: the user's own path may end in the same name
            found = re.compile(f"{re.escape(str(copy))}|(?<![\\w/.-]){re.escape(copy.name)}")
            text = found.sub(str(original).replace("\\", "\\\\"), text)
    return text


def with_explicit_rules(games: list[Path], workdir: Path) -> list[Path]:
    """Copies of the games that name their rules (Chinese when they do not): `evalsgf` and
    GTP's `loadsgf` fall back to different defaults, and the inputs must be the same."""
    from sgfmill import sgf

    from katapool.game.record import parse_sgf

    copies = []
    for i, path in enumerate(games):
        try:
            data = path.read_bytes()
            game = sgf.Sgf_game.from_bytes(data)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: not a readable SGF game ({exc})") from None
        parse_sgf(data, str(path))  # what KataGo cannot take is said of the user's file, not a copy
        _check_moves(game, path)
        root = game.get_root()
        if not root.has_property("RU"):
            root.set("RU", "Chinese")
        copy = workdir / f"{i:03d}-{path.stem}.sgf"
        copy.write_bytes(game.serialise())
        _COPY_OF[copy] = path
        copies.append(copy)
    return copies


def _check_moves(game: Any, path: Path) -> None:
    """A move on an occupied point makes the engine abort half-way through the positions;
    found here, before it starts, and said of the user's file."""
    from sgfmill import sgf_moves

    from katapool.game.record import to_gtp

    try:
        board, plays = sgf_moves.get_setup_and_moves(game)
    except ValueError:
        return  # setup KataGo cannot take: parse_sgf has its own words for it
    for number, (colour, move) in enumerate(plays, 1):
        if move is None:
            continue
        try:
            board.play(*move, colour)
        except ValueError:
            raise GameRecordError(f"{path}: move {number} ({colour.upper()} "
                                  f"{to_gtp(move, game.get_size())}) is on an occupied point; "
                                  "KataGo cannot replay the game") from None


def sample_positions(games: list[Path], count: int, seed: int = 7,
                     board: int | None = None) -> list[Position]:
    """``count`` positions spread over the games (without handicap or setup stones); only
    ``board`` x ``board`` ones when given (a graph of fixed board size takes no other)."""
    rng = random.Random(seed)
    pool: list[Position] = []
    sizes: set[int] = set()
    for path in games:
        record: GameRecord = load_sgf(path)
        if record.initial_stones:
            continue
        sizes.add(record.size)
        if board is not None and record.size != board:
            continue
        to_move = [record.moves[k][0] == "B" for k in range(len(record.moves))]
        pool += [Position(path, k, record.size, to_move[k] if k < len(to_move)
                          else record.moves[-1][0] == "W") for k in range(len(record.moves) + 1)]
    if not pool and sizes:
        raise ConfigError(f"the games hold no {board}x{board} positions (board sizes: "
                          f"{', '.join(map(str, sorted(sizes)))}); give {board}x{board} games")
    if not pool:
        raise ModelError("no usable positions in the given games")
    rng.shuffle(pool)
    return sorted(pool[:count], key=lambda p: (str(p.sgf), p.moves))


def engine_inputs(katago: Path, config: Path, model: Path, pos: Position,
                  workdir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The spatial and global input tensors the engine builds for ``pos`` (symmetry 0)."""
    out = workdir / f"in-{pos.sgf.stem}-{pos.moves}.npz"
    proc = subprocess.run([str(katago), "evalsgf", "-config", str(config), "-model", str(model),
                           "-m", str(pos.moves), "-v", "1", "-dump-npz-input-to", str(out),
                           str(pos.sgf)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EngineError(f"katago evalsgf failed on {game_as_given(pos.sgf)} move {pos.moves}: "
                          f"{as_given(tail[0])}")
    with np.load(out) as data:
        spatial = data["binaryInputNCHW"].reshape(1, -1, pos.size, pos.size).astype(np.float32)
        global_ = data["globalInputNC"].astype(np.float32)
    return spatial, global_


def _input_features(version: int) -> int:
    """The input-feature set a model version reads (KataGo's numbering: 3 to 7)."""
    return 7 if version >= 8 else 3 if version <= 4 else version - 1


def check_input_model(path: Path, model: ModelDesc) -> None:
    """``path`` (``--input-model``) must be a readable network that is fed the same input
    tensors as ``model``; found before the engine starts, not in its first evalsgf."""
    from katapool.models.desc import load_model

    other = load_model(path)
    if (_input_features(other.version), other.spatial_inputs, other.global_inputs) != \
            (_input_features(model.version), model.spatial_inputs, model.global_inputs):
        raise ConfigError(f"--input-model {path}: its input features (model version "
                          f"{other.version}, {other.spatial_inputs} spatial, {other.global_inputs} "
                          f"global) are not {model.name}'s (version {model.version}, "
                          f"{model.spatial_inputs} spatial, {model.global_inputs} global)")


INPUTS_CACHE_FORMAT = 1
INPUTS_CACHE_KEEP = 4096  # files (about 30 KB each for 19x19); the oldest go first


def inputs_cache_key(katago: Path, config: Path, model: Path, pos: Position) -> str:
    """What the engine's input tensors for a position depend on: the engine build and the
    network it loads (the input features are the network's version), the config (optimism and
    the like feed the global inputs), the game file's bytes (moves, rules, komi) and the move."""
    digest = hashlib.sha256(f"katapool-inputs-{INPUTS_CACHE_FORMAT}".encode())
    for path in (katago, model):
        st = path.stat()
        digest.update(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for data in (config.read_bytes(), pos.sgf.read_bytes(), str(pos.moves).encode()):
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()[:40]


def _cached_inputs(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(path) as data:
            return data["spatial"], data["globals"]
    except (OSError, ValueError, KeyError, EOFError):  # absent or damaged: made again
        return None


def _store_inputs(path: Path, spatial: np.ndarray, global_: np.ndarray) -> None:
    with contextlib.suppress(OSError):  # a cache that cannot be written only costs time
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.npz")
        np.savez(scratch, spatial=spatial, globals=global_)
        os.replace(scratch, path)


def _prune_inputs(cache: Path) -> None:
    """The oldest files beyond INPUTS_CACHE_KEEP go; once per call, not per file written."""
    aged = []
    for file in cache.glob("*.npz"):
        with contextlib.suppress(OSError):  # another katapool may be pruning too
            aged.append((file.stat().st_mtime_ns, file))
    aged.sort()
    for _, file in aged[:max(0, len(aged) - INPUTS_CACHE_KEEP)]:
        with contextlib.suppress(OSError):
            file.unlink(missing_ok=True)


def engine_inputs_many(katago: Path, config: Path, model: Path, positions: list[Position],
                       workdir: Path) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """``engine_inputs`` for each position, in order, kept in katapool's cache: validating
    another export, precision or budget on the same games asks the engine nothing new. Each
    missing one is a short engine process, most of whose time is the backend's start (about
    3 s on PoCL), so several run at once; the first runs alone, so that whatever it prepares
    and caches (tuning, a TensorRT plan) is there for the others."""
    cache = paths.cache_dir() / "engine-inputs"
    files = [cache / f"{inputs_cache_key(katago, config, model, pos)}.npz" for pos in positions]
    known = [_cached_inputs(f) for f in files]
    missing = [i for i, k in enumerate(known) if k is None]

    def make(i: int) -> tuple[np.ndarray, np.ndarray]:
        spatial, global_ = engine_inputs(katago, config, model, positions[i], workdir)
        _store_inputs(files[i], spatial, global_)
        return spatial, global_

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="katapool-evalsgf") as pool:
        futures = {}
        try:
            for i, found in enumerate(known):
                if found is None and i == missing[0]:
                    found = make(i)
                    futures = {j: pool.submit(make, j) for j in missing[1:]}
                yield found if found is not None else futures[i].result()
        finally:
            for future in futures.values():
                future.cancel()
    if missing:
        _prune_inputs(cache)


def gtp_ask(proc: subprocess.Popen[str], command: str) -> list[str]:
    """One GTP command to a `katago gtp` on pipes; the answer's lines (the first starts with
    "="), or an EngineError for a refusal or an engine that exited."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    lines: list[str] = []
    while True:
        line = proc.stdout.readline()
        if not line:
            raise EngineError(as_given(f"katago gtp exited while answering {command!r}"))
        line = line.rstrip("\n")
        if line == "" and lines:
            break
        if line:
            lines.append(line)
    if lines[0].startswith("?"):
        raise EngineError(as_given(f"katago gtp refused {command!r}: {lines[0]}"))
    return lines


class RawNN:
    """One ``katago gtp`` answering ``kata-raw-nn`` for position after position."""

    def __init__(self, katago: Path, config: Path, model: Path) -> None:
        self.proc = subprocess.Popen(
            [str(katago), "gtp", "-config", str(config), "-model", str(model),
             "-override-config", "rootPolicyOptimism=0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def _ask(self, command: str) -> list[str]:
        return gtp_ask(self.proc, command)

    def evaluate(self, pos: Position, symmetry: int = 0) -> EngineEval:
        self._ask(f"loadsgf {pos.sgf} {pos.moves + 1}")
        lines = self._ask(f"kata-raw-nn {symmetry} 0")
        values: dict[str, float] = {}
        policy: list[float] = []
        ownership: list[float] = []
        section = None
        for line in lines:
            words = line.lstrip("=").split()
            if not words:
                continue
            if words[0] in ("policy", "whiteOwnership"):
                section = words[0]
            elif words[0] == "policyPass":
                values["pass"] = float(words[1])
                section = None
            elif section == "policy":
                policy += [float("nan") if w.upper() == "NAN" else float(w) for w in words]
            elif section == "whiteOwnership":
                ownership += [float(w) for w in words]
            elif len(words) == 2:
                with contextlib.suppress(ValueError):
                    values[words[0]] = float(words[1])
        return EngineEval(values["whiteWin"], values["whiteLead"],
                          np.array([*policy, values["pass"]]), np.array(ownership))

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(EngineError):
                self._ask("quit")
            self.proc.wait(30)


def postprocess(model: ModelDesc, outputs: dict[str, np.ndarray], black_to_move: bool,
                legal: np.ndarray, global_input: np.ndarray) -> EngineEval:
    """KataGo's post-processing of one position's raw outputs, from White's view."""
    value = outputs["OutputValue"][0].astype(np.float64)
    if global_input[6] != 0 and global_input[9] == 0:
        value[2] = -1e5  # KataGo: no draws by long cycles under non-simple ko with area scoring
    probs = np.exp(value - value.max())
    probs /= probs.sum()
    win, loss, no_result = probs
    lead = float(outputs["OutputScoreValue"][0][2]) * model.postprocess[3] * (1.0 - no_result)
    logits = np.append(outputs["OutputPolicy"][0, 0].reshape(-1),
                       outputs["OutputPolicyPass"][0, 0]).astype(np.float64)
    policy = np.full(logits.shape, np.nan)
    legal_logits = logits[legal]
    soft = np.exp(legal_logits - legal_logits.max())
    policy[legal] = soft / soft.sum()
    ownership = np.tanh(outputs["OutputOwnership"][0, 0].reshape(-1).astype(np.float64))
    sign = -1.0 if black_to_move else 1.0
    return EngineEval(loss if black_to_move else win, sign * lead, policy, sign * ownership)


def _feeds(session: Any, spatial: np.ndarray, global_: np.ndarray, meta: int) -> dict[str, np.ndarray]:
    """Inputs by name and rank, so that KataGo's own export (``InputMask``, NC11 globals) and
    katapool's are both accepted."""
    feeds: dict[str, np.ndarray] = {}
    for item in session.get_inputs():
        rank = len(item.shape)
        if item.name == "InputSpatial":
            feeds[item.name] = spatial
        elif item.name == "InputMask":
            feeds[item.name] = np.ascontiguousarray(spatial[:, :1])
        elif item.name == "InputGlobal":
            feeds[item.name] = global_.reshape(global_.shape + (1,) * (rank - 2))
        elif item.name == "InputMeta":
            feeds[item.name] = np.zeros((1, meta) + (1,) * (rank - 2), dtype=np.float32)
        else:
            raise ModelError(f"the ONNX model has an input katapool does not know: {item.name}")
    return feeds


def _squeeze(value: np.ndarray) -> np.ndarray:
    """[N, C, 1, 1] -> [N, C] for the non-spatial outputs of KataGo's own export."""
    if value.ndim == 4 and value.shape[2:] == (1, 1):
        return value.reshape(value.shape[:2])
    return value


def compare(ours: list[EngineEval], engine: list[EngineEval],
            limits: dict[str, float] | None = None) -> Report:
    diffs: dict[str, list[float]] = {"winrate": [], "lead": [], "top_policy": [], "policy_kl": [],
                                     "ownership": []}
    for a, b in zip(ours, engine, strict=True):
        diffs["winrate"].append(abs(a.white_win - b.white_win))
        diffs["lead"].append(abs(a.white_lead - b.white_lead))
        legal = ~np.isnan(b.policy)
        p, q = b.policy[legal], a.policy[legal]
        top = int(np.argmax(p))
        diffs["top_policy"].append(abs(float(q[top] - p[top])))
        floor = 1e-9
        diffs["policy_kl"].append(float(np.sum(p * (np.log(np.maximum(p, floor))
                                                    - np.log(np.maximum(q, floor))))))
        diffs["ownership"].append(float(np.max(np.abs(a.white_ownership - b.white_ownership))))
    report = Report(len(ours), limits=dict(limits or FP32_LIMITS))
    for key, values in diffs.items():
        arr = np.array(values)
        report.errors[key] = {"max": float(arr.max()), "p99": float(np.quantile(arr, 0.99))}
    return report


@dataclass
class Sample:
    """One position as the engine sees it: its input tensors (symmetry 0) and its own
    evaluation under the chosen symmetry."""

    position: Position
    spatial: np.ndarray
    global_: np.ndarray
    engine: EngineEval


def engine_reference(model: ModelDesc, katago: Path, config: Path, positions: list[Position],
                     on_position: Callable[[], None] | None = None,
                     input_model: Path | None = None, symmetry: int = 0) -> list[Sample]:
    """The engine's inputs and outputs for ``positions``; made once, compared with any number
    of ONNX models (FP32, FP16, INT8) of the same network.
    ``input_model``: the network evalsgf loads to dump inputs (any network with the same input
    features gives the same tensors; a small one is faster)."""
    raw = RawNN(katago, config, model.source.path)
    samples: list[Sample] = []
    try:
        with tempfile.TemporaryDirectory(prefix="katapool-validate-") as tmp:
            inputs = engine_inputs_many(katago, config, input_model or model.source.path,
                                        positions, Path(tmp))
            with contextlib.closing(inputs):  # an engine error stops the runs still queued
                for pos, (spatial, global_) in zip(positions, inputs, strict=True):
                    samples.append(Sample(pos, spatial, global_, raw.evaluate(pos, symmetry)))
                    if on_position:
                        on_position()
    finally:
        raw.close()
    return samples


def onnx_session(onnx_bytes: bytes) -> Any:
    """A CPU session. For FP16 models, without graph optimizations: ONNX Runtime's CPU provider
    has few FP16 kernels and computes the rest in FP32 between inserted casts; its optimizer
    then removes FP16->FP32 cast pairs, so activations would skip FP16 rounding. Unoptimized,
    every FP16 tensor is rounded, as on a GPU."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    proto = onnx.load_from_string(onnx_bytes)
    if any(init.data_type == onnx.TensorProto.FLOAT16 for init in proto.graph.initializer):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def feeds_for(session: Any, model: ModelDesc, spatial: np.ndarray, global_: np.ndarray,
              symmetry: int = 0) -> dict[str, np.ndarray]:
    return _feeds(session, apply_symmetry(spatial, symmetry), global_, model.meta_inputs)


def onnx_evals(model: ModelDesc, onnx_bytes: bytes, samples: list[Sample],
               symmetry: int = 0) -> list[EngineEval]:
    """The ONNX model's post-processed evaluations of the samples' positions."""
    return session_evals(model, onnx_session(onnx_bytes), samples, symmetry)


def session_evals(model: ModelDesc, session: Any, samples: list[Sample],
                  symmetry: int = 0, batch: int = 1) -> list[EngineEval]:
    """Post-processed evaluations by any runner with ONNX Runtime's session interface
    (``get_inputs``, ``get_outputs``, ``run``): ONNX Runtime itself, or LiteRT's interpreter.
    ``batch``: positions per run (for runners with a dynamic batch)."""
    names = [o.name for o in session.get_outputs()]
    evals = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        feeds = [feeds_for(session, model, s.spatial, s.global_, symmetry) for s in chunk]
        joined = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        run = {name: _squeeze(v) for name, v in
               zip(names, session.run(None, joined), strict=True)}
        for i, s in enumerate(chunk):
            outputs = {name: v[i:i + 1] for name, v in run.items()}
            for key in ("OutputPolicy", "OutputOwnership"):
                outputs[key] = invert_symmetry(outputs[key], symmetry)
            evals.append(postprocess(model, outputs, s.position.black_to_move,
                                     ~np.isnan(s.engine.policy), s.global_[0]))
    return evals


def validate(model: ModelDesc, onnx_bytes: bytes, katago: Path, config: Path,
             positions: list[Position], limits: dict[str, float] | None = None,
             on_position: Callable[[], None] | None = None,
             input_model: Path | None = None, symmetry: int = 0) -> Report:
    """Evaluate ``positions`` with the engine and with the ONNX model; compare."""
    samples = engine_reference(model, katago, config, positions, on_position, input_model, symmetry)
    return compare(onnx_evals(model, onnx_bytes, samples, symmetry), [s.engine for s in samples],
                   limits)
