"""Exceptions raised by fiftyone_cass. All input problems are ``ValueError`` subclasses.

Errors about settings are structured, so that every surface words them itself without parsing
message text:

* :class:`SettingError` (a bad value) carries ``setting``, ``value``, ``allowed`` (what the
  setting accepts, in words) and ``help``;
* any :class:`InvalidInputError` message may name settings with :func:`kw` / :func:`use`
  (``f"... {use('overwrite', True)} to replace them"``): the error keeps those references, its
  ``str()`` spells them as Python keywords (``pass overwrite=True``), and :meth:`InvalidInputError.render`
  spells them in another surface's words (``--overwrite`` on the command line, ``tick “Overwrite
  existing labels”`` in the App's form) through a :class:`Wording`.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

_REF = "\x1f"  # delimits a setting reference inside a message template
_SEP = "\x1e"  # name / value / verb inside a reference
NO_VALUE = "\x1d"  # a reference without a value


#: a placeholder value, written as Python would show "some value" (``classes=[...]``)
SOME_LIST, SOME_TEXT, SOME_DICT = "[...]", "'...'", "{...}"
_PLACEHOLDERS = (SOME_LIST, SOME_TEXT, SOME_DICT)


def kw(name: str, value: Any = NO_VALUE) -> str:
    """A reference to setting ``name`` (with ``value``; :data:`SOME_LIST` and friends for "some
    value") in an error message: ``label_field``, ``overwrite=True``, ``masks='database'``,
    ``classes=[...]`` in Python's words."""
    return _ref(name, value, "")


def use(name: str, value: Any = NO_VALUE) -> str:
    """A reference to *giving* setting ``name`` the value ``value``: ``pass overwrite=True`` in
    Python's words, ``pass --overwrite`` on the command line, ``tick “Overwrite…”`` in the form."""
    return _ref(name, value, "use")


def is_placeholder(value: Optional[str]) -> bool:
    """Whether a reference's value is "some value" (:data:`SOME_LIST`, ...), not a given one."""
    return value in _PLACEHOLDERS


def _ref(name: str, value: Any, verb: str) -> str:
    if value is NO_VALUE:
        text = NO_VALUE
    elif isinstance(value, str) and value in _PLACEHOLDERS:
        text = value
    else:
        text = repr(value)
    return f"{_REF}{name}{_SEP}{text}{_SEP}{verb}{_REF}"


Part = Union[str, Tuple[str, Optional[str], str]]


def _parts(template: str) -> List[Part]:
    """The template as text and ``(name, value repr | None, verb)`` references."""
    pieces = template.split(_REF)
    out: List[Part] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0 or piece.count(_SEP) != 2:
            if piece:
                out.append(piece if i % 2 == 0 else piece.replace(_SEP, ""))
            continue
        name, value, verb = piece.split(_SEP)
        out.append((name, None if value == NO_VALUE else value, verb))
    return out


class Wording:
    """How a surface names settings. The base class is Python's: keywords."""

    def name(self, name: str, value: Optional[str], verb: str) -> str:
        """A reference: ``name`` (or ``name=value``), ``verb == "use"``: preceded by "pass"."""
        text = name if value is None else f"{name}={value}"
        return f"pass {text}" if verb == "use" else text

    def bad_value(self, err: "SettingError") -> str:
        """The message of a :class:`SettingError`."""
        return (f"{err.what} {err.setting}={err.value!r} is not allowed: {err.allowed}"
                + (f" ({err.help})" if err.help else ""))


PYTHON = Wording()


class CassError(Exception):
    """Base class of fiftyone_cass errors."""


class InvalidInputError(CassError, ValueError):
    """Bad user input (vocabulary, options, image). The message may reference settings
    (:func:`kw`, :func:`use`); ``str()`` words them as Python keywords, :meth:`render` in the
    words of another surface."""

    def __init__(self, message: Any = "", *args):
        self.template = message if isinstance(message, str) else str(message)
        super().__init__(self.render(PYTHON), *args)

    def render(self, wording: Wording) -> str:
        """The message with its setting references in ``wording``'s words."""
        return "".join(p if isinstance(p, str) else wording.name(*p) for p in _parts(self.template))

    def prefixed(self, prefix: str) -> "InvalidInputError":
        """The same error (class and references kept) with ``prefix`` before its message."""
        try:
            new = type(self).__new__(type(self))
            new.__dict__.update(self.__dict__)
            new.template = prefix + self.template
            Exception.__init__(new, new.render(PYTHON))
            return new
        except Exception:  # noqa: BLE001 - an exotic subclass: plain text
            return InvalidInputError(prefix + self.template)


class SettingError(InvalidInputError):
    """A setting given a value it does not allow: ``setting`` (its name), ``value`` (as given),
    ``allowed`` (what it accepts, in words), ``help`` (its help text) and ``what`` (how the
    Python message calls settings of its kind: ``option``, ``--options``, ``-o``)."""

    def __init__(self, setting: str, value: Any, allowed: str, help: Optional[str] = None, what: str = "option"):
        self.setting, self.value, self.allowed, self.help, self.what = setting, value, allowed, help, what
        super().__init__(PYTHON.bad_value(self).replace(_REF, ""))

    def render(self, wording: Wording) -> str:
        return wording.bad_value(self)

    def prefixed(self, prefix: str) -> "InvalidInputError":
        return InvalidInputError(prefix + self.template)

    def __reduce__(self):
        return (SettingError, (self.setting, self.value, self.allowed, self.help, self.what))


class ImageLoadError(InvalidInputError):
    """An image could not be read or decoded; the message names the item."""


class WeightsUnavailableError(CassError, RuntimeError):
    """Model weights could not be found or downloaded; the message says how to provide them. It
    may reference settings (:func:`kw`) like :class:`InvalidInputError`."""

    def __init__(self, message: Any = "", *args):
        self.template = message if isinstance(message, str) else str(message)
        super().__init__(self.render(PYTHON), *args)

    render = InvalidInputError.render


class CheckpointError(InvalidInputError):
    """A local checkpoint file that cannot be used (not a state dict, pickled objects, other model);
    the message names the file and what was expected."""


def render(exc: BaseException, wording: Wording) -> str:
    """``exc``'s message in ``wording``'s words (any exception: others as ``str()``)."""
    r = getattr(exc, "render", None)
    if callable(r) and hasattr(exc, "template"):
        return r(wording)
    return str(exc)


class RunAbortedError(CassError, RuntimeError):
    """A labelling run stopped because what it writes to vanished under it (its dataset deleted,
    its mask folder removed); the message says what happened, what was cleaned up and what to do."""


def is_sample_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a problem of one sample's data, reported on that sample while the run
    goes on: an input error (an unreadable image, a bad value) or running out of memory on it
    (retried alone, it may fit). Anything else is a bug: it stops the run with its traceback
    (``fiftyone-cass label`` exit 3, the operator's "unexpected error"), and is not retried
    image by image."""
    return isinstance(exc, (InvalidInputError, MemoryError)) or type(exc).__name__ == "OutOfMemoryError"


def typed_value(value: str) -> str:
    """A value as typed on the command line (``'database'`` -> ``database``)."""
    import ast

    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    return v if isinstance(v, str) else value
