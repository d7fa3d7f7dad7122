"""Compile and render a body template in Jinja2's sandbox, within size caps.

Templates see plain dicts and strings only; the sandbox refuses `_`-prefixed and internal
attributes, and changes in place to a list or dict (a `SecurityError`, raised through
`StrictUndefined`, never empty output). Sizes are checked before they are made: `*`, `**`,
`%` and `+` refuse results over `MAX_VALUE` characters or items (`MAX_INT_BITS` for
numbers), and calls and filters refuse integer arguments over `MAX_VALUE` (widths, counts).
The output stops at `MAX_BODY_BYTES`. Renders run in worker processes (`pool`), whose
memory is capped at `MAX_MEMORY_BYTES`.
"""

from __future__ import annotations

import functools
import json
import re
import traceback
from collections.abc import Callable, Iterable, Mapping, Sized
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.exceptions import TemplateError as JinjaError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import _PassArg

from bridge.errors import BridgeError

MAX_BODY_BYTES = 1 << 20  # 1 MiB
MAX_VALUE = 1 << 20  # characters or items of any one value a template makes
MAX_INT_BITS = 1 << 16  # of a number a template makes with `*` or `**`
MAX_MEMORY_BYTES = 512 << 20  # the address space of a process that renders templates
JSON_TYPE = "application/json"
TEMPLATE_NAME = "<template>"  # the file name of a template's frames in tracebacks
_BIG_WIDTH = re.compile(r"\d{7,}")  # a width or precision in a format string: too wide


class TemplateError(BridgeError):
    """A template cannot give a body; the message names the template line when known."""


def is_json_type(content_type: str) -> bool:
    """`application/json` or any `*+json` media type (parameters ignored)."""
    essence = content_type.split(";", 1)[0].strip().lower()
    return essence == JSON_TYPE or essence.endswith("+json")


def _tojson(value: Any) -> str:
    """Compact JSON, non-ASCII kept and nothing HTML-escaped (unlike Jinja's own `tojson`)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _size(value: object) -> int:
    return len(value) if isinstance(value, Sized) and not isinstance(value, Mapping) else 0


def _too_big(what: str) -> SecurityError:
    return SecurityError(f"{what} is too large (the limit is {MAX_VALUE} characters or items)")


def _check_args(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    for arg in (*args, *kwargs.values()):
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_VALUE:
            raise SecurityError(f"the argument {arg} is too large (the limit is {MAX_VALUE})")


def _joined(items: object, separator: object) -> object:
    """`items` as a list (a generator is read once, here) after checking that joining them
    with `separator` stays within `MAX_VALUE`; anything else as it is."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        return items
    listed = list(items)
    sep = len(separator) if isinstance(separator, str) else 0
    total = sum(_size(i) for i in listed) + sep * max(0, len(listed) - 1)
    if total > MAX_VALUE:
        raise _too_big("the joined string")
    return listed


def _check_replace(value: str, old: str, new: str) -> None:
    if len(value) + (value.count(old) if old else len(value) + 1) * len(new) > MAX_VALUE:
        raise _too_big("the result of replace")


def _capped_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    skip = 1 if _PassArg.from_obj(func) is None else 2  # the value (and context) first

    @functools.wraps(func)
    def capped(*args: Any, **kwargs: Any) -> Any:
        _check_args(args[skip:], kwargs)
        if name == "replace" and len(args) >= skip + 2:
            _check_replace(*(str(a) for a in args[skip - 1 : skip + 2]))
        if name == "join" and len(args) >= skip:
            separator = args[skip] if len(args) > skip else kwargs.get("d", "")
            args = (*args[: skip - 1], _joined(args[skip - 1], separator), *args[skip:])
        if name == "format" and _BIG_WIDTH.search(str(args[skip - 1])):
            raise _too_big("a width in the format")
        return func(*args, **kwargs)

    return capped


class _CappedConcat(CodeGenerator):
    """`a ~ b` through `BodySandbox.joined`, so that a string built by `~` is capped too."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.joined((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BodySandbox(ImmutableSandboxedEnvironment):
    """The sandbox every body template runs in: immutable, so no list or dict grows in place
    (`append`, `extend`, `update`, … are refused), past the caps below."""

    code_generator_class = _CappedConcat
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self) -> None:
        super().__init__(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=False)
        self.filters = {name: _capped_filter(name, f) for name, f in self.filters.items()}
        self.filters["tojson"] = _capped_filter("tojson", _tojson)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and max(left.bit_length(), 1) * right > MAX_INT_BITS and abs(left) > 1:
                raise SecurityError(f"{left} ** {right} is too large")
        elif operator == "*":
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    raise SecurityError("the product is too large")
            else:
                count = right if isinstance(left, str | list | tuple) else left
                seq = left if isinstance(left, str | list | tuple) else right
                if isinstance(count, int) and _size(seq) * count > MAX_VALUE:
                    raise _too_big("the result of *")
        elif operator == "%" and isinstance(left, str):
            values = right if isinstance(right, tuple) else (right,)
            _check_args(values, {})
            if _BIG_WIDTH.search(left):
                raise _too_big("a width in the format")
        elif operator == "+" and _size(left) + _size(right) > MAX_VALUE:
            raise _too_big("the result of +")
        return super().call_binop(context, operator, left, right)

    def joined(self, parts: tuple[Any, ...]) -> str:
        texts = [str(p) for p in parts]
        if sum(len(t) for t in texts) > MAX_VALUE:
            raise _too_big("the result of ~")
        return "".join(texts)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _check_args(args, kwargs)
        method = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped
        owner = getattr(method, "__self__", None)
        if isinstance(owner, str):
            name = getattr(method, "__name__", "")
            if name in ("format", "format_map") and _BIG_WIDTH.search(owner):
                raise _too_big("a width in the format")
            if name == "join" and args:
                args = (_joined(args[0], owner), *args[1:])
            if name == "replace" and len(args) >= 2:
                _check_replace(owner, str(args[0]), str(args[1]))
        return super().call(__context, __obj, *args, **kwargs)


_ENV = BodySandbox()


def template_line(exc: BaseException) -> int | None:
    """The template line an error was raised at: Jinja rewrites tracebacks so that a
    template's frames carry its file name and line numbers."""
    if isinstance(exc, TemplateSyntaxError):
        return exc.lineno
    line = None
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename == TEMPLATE_NAME:
            line = lineno
    return line


def problem(exc: BaseException) -> TemplateError:
    """A template's error as `template line N: reason` (`template: reason` without a line)."""
    if isinstance(exc, TemplateError):
        return exc
    if isinstance(exc, JinjaError):
        reason = exc.message or type(exc).__name__
    elif isinstance(exc, RecursionError):
        reason = "too deeply nested (recursion)"
    elif isinstance(exc, MemoryError):
        reason = f"out of memory (a render may use {MAX_MEMORY_BYTES >> 20} MiB)"
    else:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    line = template_line(exc)
    where = "template" if line is None else f"template line {line}"
    return TemplateError(f"{where}: {' '.join(reason.split())}")


@functools.lru_cache(maxsize=256)
def compiled(source: str) -> Template:
    """The template compiled once (per source text); `TemplateError` on a syntax error."""
    try:
        return _ENV.from_string(source)
    except TemplateSyntaxError as exc:
        raise problem(exc) from None


def render(template: Template, context: Mapping[str, Any], content_type: str) -> str:
    """The body text, within `MAX_BODY_BYTES`; for a JSON content type it must be JSON."""
    pieces: list[str] = []
    chars = 0
    try:
        for piece in template.generate(context):
            chars += len(piece)
            if chars > MAX_BODY_BYTES:
                break
            pieces.append(piece)
    except Exception as exc:
        raise problem(exc) from None
    text = "".join(pieces)
    if chars > MAX_BODY_BYTES or len(text.encode()) > MAX_BODY_BYTES:
        raise TemplateError(f"template: the body is larger than {MAX_BODY_BYTES >> 20} MiB")
    if is_json_type(content_type):
        try:
            json.loads(text)
        except ValueError as exc:
            raise TemplateError(f"template: the result is not JSON: {exc}") from None
    return text
