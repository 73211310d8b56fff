"""How messages name options, in the words of the face they appear in.

The same option is a keyword in the Python API (``device='cpu'``), a flag on the command line (``--device cpu``),
an input of the ComfyUI node (``precision = fp32``) and a field of Scope's settings (``compute_height = 0``). The
core writes each message once, with option references in braces, and :func:`words` renders them in the
:class:`Vocabulary` of the face in use: ``{device='cpu'}`` (a setting), ``{device}`` (the option's name), or
``{height=value}`` (a setting whose value is the keyword argument ``value``). A sentence that names an option the
face does not have (Scope has no ``device`` field) is left out, so no message tells a user to set something
they cannot set.

Faces pass their vocabulary to the preprocessor (``vocabulary=``) or make it current with :func:`speaking`;
everything else uses :data:`PYTHON_API`.
"""

from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

Style = Literal["keyword", "flag", "field"]
# The compute size: ``height`` and ``width`` together, value ``(height, width)``; faces with one option for both
# (the command line's ``--size``) name it, the others get both settings.
SIZE = "size"
# Options in plain words, for status lines of faces that do not have them as settings.
PLAIN_NAMES = {"num_flow_updates": "flow updates", "flow_strength": "flow strength", "first_frame": "first frame",
               "max_flow": "max flow"}
_REFERENCE = re.compile(r"\{(\w+)(?:=([^{}]+))?\}")


class Placeholder(str):
    """A value that stands for what the user fills in, written as it is in every style: ``--manifest FILE``,
    ``manifest=FILE``."""

    def __repr__(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Vocabulary:
    """One face's names for the core's options (keyed by the Python API's keyword names).

    ``names``: the face's name of each option it has (options it lacks are absent). ``values``: per option, core
    values the face spells otherwise (``weights`` ``None`` is ``untrained`` on the command line). ``settings``:
    whole settings the face spells its own way (``("fp16", False)`` is ``--fp32``). ``style`` decides how a
    setting is written: ``name='value'`` (keyword), ``--name value`` (flag) or ``name = value`` (field).
    """

    face: str
    style: Style
    names: Mapping[str, str] | None  # None: every option key is its own name (the Python API)
    values: Mapping[str, Mapping[object, str]] = field(default_factory=dict)
    settings: Mapping[tuple[str, object], str] = field(default_factory=dict)

    def has(self, key: str) -> bool:
        if self.names is None or key in self.names:
            return True
        return key == SIZE and self.has("height") and self.has("width")

    def name(self, key: str) -> str:
        """The face's name of option ``key`` (the key itself where the face lacks it)."""
        if key == SIZE and (self.names is None or SIZE not in self.names):
            return f"{self.name('height')} and {self.name('width')}"
        return key if self.names is None else self.names.get(key, key)

    def value(self, key: str, value: object) -> object:
        """``value`` of option ``key`` as the face spells it."""
        try:
            return self.values.get(key, {}).get(value, value)
        except TypeError:  # an unhashable value: spelled as it is
            return value

    def setting(self, key: str, value: object) -> str:
        """Option ``key`` set to ``value``, as a user of this face writes it."""
        try:
            whole = self.settings.get((key, value))
        except TypeError:
            whole = None
        if whole is not None:
            return whole
        if key == SIZE:
            return self._size_setting(value)  # type: ignore[arg-type]
        name, spelled = self.name(key), self.value(key, value)
        if self.style == "keyword":
            return f"{name}={spelled!r}"
        if self.style == "flag":  # text as a shell takes it: -o 'flow/{stem}.mp4'
            return name if spelled is True else f"{name} {_shell_word(spelled)}"
        return f"{name} = {spelled}"

    def _size_setting(self, size: tuple[object, object]) -> str:
        height, width = size
        if self.style == "flag":
            spelled = self.value(SIZE, size)
            return f"{self.name(SIZE)} {spelled if spelled is not size else f'{height}x{width}'}"
        return f"{self.setting('height', height)}, {self.setting('width', width)}"

    def describe(self, key: str, value: object) -> str:
        """Like :meth:`setting`, but also for an option the face lacks (in plain words, ``flow updates 20``): for
        status lines."""
        return self.setting(key, value) if self.has(key) else f"{PLAIN_NAMES.get(key, key)} {value}"


PYTHON_API = Vocabulary(face="Python API", style="keyword", names=None)

_current: ContextVar[Vocabulary] = ContextVar("scope_optical_flow_vocabulary", default=PYTHON_API)


def current_vocabulary() -> Vocabulary:
    """The vocabulary messages are rendered in here (the Python API's unless a face made its own current)."""
    return _current.get()


@contextmanager
def speaking(vocabulary: Vocabulary | None) -> Iterator[Vocabulary]:
    """Render messages raised or logged inside the block in ``vocabulary`` (``None``: keep the current one)."""
    if vocabulary is None:
        yield current_vocabulary()
        return
    token = _current.set(vocabulary)
    try:
        yield vocabulary
    finally:
        _current.reset(token)


def words(*sentences: str, **values: object) -> str:
    """Render ``sentences`` in the current vocabulary, leaving out each sentence that names an option the face
    lacks, and join the rest with spaces. In a reference ``{key=text}``, ``text`` is a keyword argument's name or
    a Python literal; ``{key}`` is the option's name."""
    vocabulary = current_vocabulary()
    rendered: list[str] = []
    for sentence in sentences:
        keys = [match.group(1) for match in _REFERENCE.finditer(sentence)]
        if not all(vocabulary.has(key) for key in keys):
            continue
        rendered.append(_REFERENCE.sub(lambda match: _render(vocabulary, match, values), sentence))
    return " ".join(rendered)


def option_name(key: str) -> str:
    """Option ``key``'s name in the current vocabulary."""
    return current_vocabulary().name(key)


def setting(key: str, value: object) -> str:
    """Option ``key`` set to ``value`` in the current vocabulary."""
    return current_vocabulary().setting(key, value)


def _shell_word(value: object) -> object:
    return value if isinstance(value, Placeholder) or not isinstance(value, str) else shlex.quote(value)


def _render(vocabulary: Vocabulary, match: re.Match[str], values: Mapping[str, object]) -> str:
    key, text = match.group(1), match.group(2)
    if text is None:
        return vocabulary.name(key)
    text = text.strip()
    value = values[text] if text in values else ast.literal_eval(text)
    return vocabulary.setting(key, value)
