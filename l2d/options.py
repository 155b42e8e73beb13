"""Options declared once, beside the code that reads them.

A group of options is a frozen dataclass that subclasses ``Options`` and makes its fields with
``option()``: the field's name is the flag (``--batch-size`` for ``batch_size``), its annotation
the type, and the declaration holds the default, the one help text, the choices and when the
value may change. Everything else is derived from these declarations: the train parser and its
``--help`` groups (``l2d.cli``), the error for a flag of another method, which options
``--resume`` and ``--test`` may change (``l2d.config``), ``config.json`` and the MLflow params
(``TrainConfig.to_dict``), and the flags reference of the docs (``flags_reference``).

Importing this module imports nothing heavy: the CLI builds its parser from it instantly.
"""

import dataclasses
import math
import types
import typing
from typing import Any, ClassVar

from l2d.errors import L2DError

# When an option's value may change after a run started: never (it changes the numbers), on
# ``--test`` (which manifests to evaluate on, and how to route them), or at any time, on
# ``--resume`` too (speed, and where things are written).
FIXED = "fixed"
ON_TEST = "on --test"
ANY_TIME = "any time"
CHANGES = (FIXED, ON_TEST, ANY_TIME)

_DECLARATION = "l2d.option"


@dataclasses.dataclass(frozen=True)
class Declaration:
    """What ``option()`` records about a field besides its name, type and default."""

    help: str
    choices: tuple | None = None
    changes: str = FIXED
    # A flag of its own name: a boolean whose flag switches it off (``--stream-from-disk``).
    negated_flag: str | None = None
    metavar: str | None = None


def option(default: Any, help: str, *, choices: tuple | None = None, changes: str = FIXED,
           negated_flag: str | None = None, metavar: str | None = None) -> Any:
    """A field of an ``Options`` group that is a flag; see the module docstring."""
    if changes not in CHANGES:
        raise ValueError(f"changes={changes!r}: one of {CHANGES}")
    return dataclasses.field(default=default, metadata={_DECLARATION: Declaration(
        help=help, choices=choices, changes=changes, negated_flag=negated_flag,
        metavar=metavar)})


def derived(default: Any = None) -> Any:
    """A field that is recorded with the run but is not a flag: l2d works it out (e.g. the
    image shape); it never changes once recorded."""
    return dataclasses.field(default=default)


@dataclasses.dataclass(frozen=True)
class Option:
    """One declared option, as the parser, the checks and the docs read it."""

    name: str
    type: Any  # The field's annotation, e.g. ``int | None`` or ``tuple[float, ...] | None``.
    default: Any
    declaration: Declaration

    @property
    def flag(self) -> str:
        return self.declaration.negated_flag or flag_of(self.name)

    @property
    def kind(self) -> type:
        """The type of one value: bool, int, float, str, or tuple for a comma-separated list."""
        base = non_optional(self.type)
        return tuple if typing.get_origin(base) is tuple else base

    @property
    def item_kind(self) -> type:
        """The type of each item of a comma-separated list."""
        return typing.get_args(non_optional(self.type))[0]


def flag_of(name: str) -> str:
    """``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def non_optional(annotation: Any) -> Any:
    """``X`` of ``X | None``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        others = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(others) == 1:
            return others[0]
    return annotation


def shown(value: Any) -> str:
    """A value as a flag gives it: a list comma-separated."""
    if isinstance(value, tuple | list):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def listed(names, last: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c`` (``last`` joins the last two)."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def invalid(name: str, value: Any, problem: str) -> L2DError:
    """The one-line error of an option's value: ``--flag=value: problem``."""
    return L2DError(f"{flag_of(name)}={shown(value)}: {problem}")


class Options:
    """Base of an option group: a frozen dataclass of ``option()`` (and ``derived()``) fields.

    ``title`` names a shared group in ``--help`` and in the docs (a method's options are
    titled by the methods that read them); ``validate`` checks the group's own values and raises
    ``invalid(...)`` for the first one that cannot work.
    """

    title: ClassVar[str]

    def validate(self) -> None:
        """Raise L2DError for the first value of this group that cannot work."""

    @classmethod
    def declared(cls) -> list[Option]:
        """The group's options (its ``option()`` fields), in declaration order."""
        hints = typing.get_type_hints(cls)
        return [Option(field.name, hints[field.name], field.default,
                       field.metadata[_DECLARATION])
                for field in dataclasses.fields(cls) if _DECLARATION in field.metadata]

    @classmethod
    def field_names(cls) -> list[str]:
        """Every field, options and derived values: the keys of this group in ``config.json``."""
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def from_values(cls, values: dict[str, Any]):
        """The group from a flat ``{name: value}`` (other names are ignored); lists, as JSON
        gives them, become tuples where the field is a tuple."""
        hints = typing.get_type_hints(cls)
        own = {}
        for name in cls.field_names():
            if name in values:
                value = values[name]
                if isinstance(value, list) and typing.get_origin(
                        non_optional(hints[name])) is tuple:
                    value = tuple(value)
                own[name] = value
        return cls(**own)

    def values(self) -> dict[str, Any]:
        """``{name: value}`` of every field."""
        return {name: getattr(self, name) for name in self.field_names()}

    def check_types(self) -> None:
        """``invalid`` for a value that is not of its option's type (values given from Python
        or read from a file; the parser converts flags): None only where the option is
        optional, and every item of a list of its item type."""
        for declared in self.declared():
            value = getattr(self, declared.name)
            if value is None:
                if non_optional(declared.type) is declared.type:
                    raise invalid(declared.name, value, "needs a value, not None")
            elif declared.kind is tuple:
                if not (isinstance(value, tuple)
                        and all(is_of(item, declared.item_kind) for item in value)):
                    raise invalid(declared.name, value, "must be a list of "
                                  f"{declared.item_kind.__name__}")
            elif not is_of(value, declared.kind):
                raise invalid(declared.name, repr(value), f"must be {declared.kind.__name__}")

    def check_choices(self) -> None:
        """``invalid`` for a value outside its option's choices (the parser checks flags; this
        checks values given from Python or read from a file)."""
        for declared in self.declared():
            choices = declared.declaration.choices
            if choices is not None and getattr(self, declared.name) not in choices:
                raise invalid(declared.name, getattr(self, declared.name),
                              f"choose one of {', '.join(map(str, choices))}")


def is_of(value: Any, kind: type) -> bool:
    """Whether ``value`` is of an option's type: an int is a float too, a bool no int."""
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_at_least(group: Options, names: tuple[str, ...], low: int) -> None:
    """``invalid`` for the first of ``names`` whose value (when not None) is below ``low``."""
    for name in names:
        value = getattr(group, name)
        if value is not None and value < low:
            raise invalid(name, value, f"must be at least {low}")


def check_positive_number(group: Options, name: str, *, zero: bool = False) -> None:
    """``invalid`` unless the value is a finite number above 0 (or 0, with ``zero``)."""
    value = getattr(group, name)
    if not (math.isfinite(value) and (value >= 0 if zero else value > 0)):
        raise invalid(name, value, f"must be a {'non-negative' if zero else 'positive'} number")


def default_text(declared: Option) -> str | None:
    """The default as ``--help`` and the docs show it; None when there is nothing to show."""
    default = declared.default
    if default in (None, "", ()) or declared.declaration.negated_flag:
        return None
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def flags_reference(groups: list[tuple[str, list[Option]]]) -> str:
    """The flags reference of the docs as Markdown: a table per group (``title, options``)."""
    sections = []
    for title, declared in groups:
        rows = ["| flag | default | may change | what it sets |", "| --- | --- | --- | --- |"]
        for item in declared:
            flag = item.flag + (f" / --no-{item.flag[2:]}" if item.kind is bool and not
                                item.declaration.negated_flag else "")
            help = item.declaration.help
            if item.declaration.choices:
                help += f" (one of: {', '.join(map(str, item.declaration.choices))})"
            default = default_text(item)
            rows.append(f"| `{flag}` | {f'`{default}`' if default else '-'} | "
                        f"{item.declaration.changes} | {help.replace('|', chr(92) + '|')} |")
        sections.append(f"## {title}\n\n" + "\n".join(rows))
    return "\n\n".join(sections) + "\n"


@dataclasses.dataclass(frozen=True)
class MethodOptions(Options):
    """Base of a method's own options (``l2d.methods``): a group whose flags only that method
    reads, with two questions the rest of l2d asks of any method, and the one option every
    method reads (each method's loss leaves an absent expert out, ``l2d.methods.base``)."""

    # The (model, width) options of the networks the method trains (``python -m l2d.bench``
    # sets them to its presets' sizes).
    networks: ClassVar[tuple[tuple[str, str], ...]] = ()

    allow_missing_annotations: bool = option(
        False, "expert manifests may omit files or give \"label\": null; an expert without an "
        "annotation is no option for that input, in training and at test time",
        changes=ON_TEST)

    def check_given(self, given: set[str]) -> None:
        """L2DError for a flag of ``given`` (the method's own flags the user typed) that these
        values make meaningless, e.g. an option of a mode that is off."""

    def resolved(self, config: Any, stored_config_of: Any) -> dict[str, Any]:
        """Values a run records when it starts, worked out from ``config`` (a
        ``TrainConfig`` whose classes and image shape are known) and earlier runs
        (``stored_config_of(run_id, flag)``: their ``TrainConfig``, or an L2DError naming
        ``flag``, the flag that named the run): flat name -> value; none by default."""
        return {}
