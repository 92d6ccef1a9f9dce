"""Options of the model configs: one default and one help text per option, in the dataclass.

A config field declared with :func:`option` carries ``metadata={"help", "min", "max",
"choices"}``; ``commands/_args.add_config_args`` builds the argparse flags and
``widgets/_model_widget.build_form`` builds the dock widget's form from the same metadata.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any = dataclasses.MISSING, *, help: str, min: float | None = None,
           max: float | None = None, choices: tuple | None = None,
           label: str | None = None, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with its help text and bounds (see the module doc)."""
    md = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None,
          "label": label}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=md)
    return dataclasses.field(default=default, metadata=md)


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One documented config option: ``path`` may be dotted (``gene.epochs``)."""

    path: str
    default: Any
    kind: type  # int | float | str | bool
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    label: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.path.split(".")[-1].replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` converted to the option's type and checked against its bounds/choices
        (``ValueError`` with a one-line message otherwise)."""
        v = self.kind(value)
        if self.choices and v not in self.choices:
            raise ValueError(f"{self.path}: {v!r} is not one of {', '.join(map(str, self.choices))}")
        if self.min is not None and v < self.min:
            raise ValueError(f"{self.path}: must be at least {self.min}, got {v}")
        if self.max is not None and v > self.max:
            raise ValueError(f"{self.path}: must be at most {self.max}, got {v}")
        return v


_KINDS = {"int": int, "float": float, "str": str, "bool": bool}


def _kind(f: dataclasses.Field, default: Any) -> type:
    if default is not None and type(default) in (int, float, str, bool):
        return type(default)
    name = str(f.type).split("|")[0].strip()
    return _KINDS.get(name, str)


def option_spec(cls_or_obj: Any, path: str) -> OptionSpec:
    """The :class:`OptionSpec` of ``path`` (dotted for nested configs) in a config class."""
    head, _, rest = path.partition(".")
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    f = {x.name: x for x in dataclasses.fields(cls)}[head]
    if rest:
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else type(f.default)
        spec = option_spec(sub, rest)
        return dataclasses.replace(spec, path=path)
    if "help" not in f.metadata:
        raise KeyError(f"{cls.__name__}.{head} has no option metadata")
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    md = f.metadata
    return OptionSpec(path=path, default=default, kind=_kind(f, default), help=md["help"],
                      min=md.get("min"), max=md.get("max"), choices=md.get("choices"),
                      label=md.get("label"))


def get_option(cfg: Any, path: str) -> Any:
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return cfg


def set_option(cfg: Any, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        cfg = getattr(cfg, part)
    setattr(cfg, last, value)
