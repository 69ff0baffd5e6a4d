"""KataGo settings given as ``key=value`` on top of a config: a pool file's ``overrides``, the
``-override-config`` of ``katapool analysis``/``gtp``, ``config generate --set``.

KataGo's ``-override-config`` reads ``a=1,b=2`` as two settings, so a value holding a comma
would carry a second key of someone else's choosing. Values are held to the rules of the
configs katapool writes (katapool.config.settings), and keys must be ones KataGo reads.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from katapool.config.generate import ANALYSIS_ONLY, GTP_ONLY
from katapool.config.katago_keys import close_keys, is_known_key
from katapool.config.settings import KataGoSettings, Mode, check_cfg_string
from katapool.errors import ConfigError

# Fields of KataGoSettings that are not KataGo keys of the same name.
_NOT_KEYS = frozenset({"mode", "backend", "devices", "eigenThreads", "extra"})


def check_key(key: str, mode: Mode | None = None) -> None:
    """ValueError unless KataGo reads ``key`` (in ``mode``, when given)."""
    if not is_known_key(key):
        hint = close_keys(key)
        raise ValueError("not a setting KataGo reads" +
                         (f" (did you mean {' or '.join(hint)}?)" if hint else ""))
    wrong = GTP_ONLY if mode is Mode.ANALYSIS else ANALYSIS_ONLY if mode is Mode.GTP else set()
    if key in wrong:
        raise ValueError(f"does not apply to KataGo's {mode.value if mode else ''} engine")


def check_value(key: str, value: Any, *, own_arg: bool = False) -> str:
    """``value`` as KataGo must read it, or ValueError saying what is wrong: the type and
    range katapool's own configs use for ``key`` where it has one, and no line break, ``=``,
    ``#`` or ``,``. In a caller's own ``-override-config`` (``own_arg``), where the commas
    are the caller's, only the type and line breaks are checked."""
    adapter = _typed(key)
    if adapter is not None:
        try:
            value = adapter.validate_python(value)
        except ValidationError as exc:
            raise ValueError(f"{exc.errors()[0]['msg']} (got {value!r})") from None
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    if own_arg:
        if any(c in text for c in "\r\n"):
            raise ValueError("must not contain a line break")
        return text
    if "," in text:
        raise ValueError(f"must not contain ',' (KataGo's -override-config reads what follows "
                         f"a comma as another setting; got {text!r})")
    try:
        check_cfg_string(text)
    except ValueError as exc:
        raise ValueError(f"{exc} (got {text!r})") from None
    return text


def check_override(key: str, value: Any, mode: Mode | None = Mode.ANALYSIS) -> str:
    check_key(key, mode)
    return check_value(key, value)


def check_override_arg(arg: str, mode: Mode) -> str:
    """A caller's own ``-override-config key=value[,key=value]``, split as KataGo splits it:
    each key must be one KataGo reads and each value fit its type; returned unchanged."""
    for item in (s.strip() for s in arg.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"-override-config {arg!r}: {item!r} is not key=value")
        try:
            check_key(key, mode)
            if value:  # KataGo takes an empty value; its own reader judges it
                check_value(key, value, own_arg=True)
        except ValueError as exc:
            raise ConfigError(f"-override-config {key}: {exc}") from None
    return arg


@cache
def _typed(key: str) -> TypeAdapter[Any] | None:
    field = KataGoSettings.model_fields.get(key)
    if field is None or key in _NOT_KEYS:
        return None
    return TypeAdapter(Annotated[field.annotation, field])  # type: ignore[arg-type]
