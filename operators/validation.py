"""How every configuration value is checked: pydantic, and one translation of its errors.

The strategy config (operators/config.py), the flow's environment (dataflows/settings.py)
and the alerts consumer's settings (consumers/alerts.py) are frozen dataclasses made by
`validated`: pydantic checks and coerces each value when the object is made ("0.3" from
the environment becomes 0.3, "on" a GuardMode, "true" True) and never again, so reading a
field on a hot path is a plain attribute read. A bad value raises ConfigError naming the
setting as its user wrote it (`risk.pos_max`, `ENSEMBLE_SEED`, `alerts.json: slippage_bps`),
the value, and the rule (the field's description, else pydantic's own words).

Which ENSEMBLE_* names exist and where a value came from is dataflows/environment.py's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import ArgsKwargs

T = TypeVar("T")
Naming = Callable[[str], str]  # a field's name as the person who set it wrote it


class ConfigError(ValueError):
    """A configuration value is wrong; the message names it and says what is allowed."""


def section(name: str) -> Naming:
    """Dotted names, as in ENSEMBLE_OVERRIDES: section("risk") names pos_max `risk.pos_max`."""
    return lambda field: f"{name}.{field}" if name else field


def variables(prefix: str) -> Naming:
    """Environment variables: variables("ENSEMBLE_") names seed `ENSEMBLE_SEED`."""
    return lambda field: prefix + field.upper()


def file_keys(path: str | Path) -> Naming:
    """Keys of a settings file: `alerts.json: slippage_bps`."""
    return lambda field: f"{path}: {field}"


def named_in(env: Mapping[str, str], fields: Iterable[str], naming: Naming) -> dict[str, str]:
    """The fields `env` sets, each under the name `naming` gives it: what a class made with
    `variables` reads from the environment."""
    return {f: env[naming(f)] for f in fields if naming(f) in env}


def _split_commas(v: Any) -> Any:
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    return v


# A list given as text is comma-separated ("BTC-PERP, ETH-PERP"); a JSON list stays a list.
CommaSeparated = BeforeValidator(_split_commas)


def _not_a_bool(v: Any) -> Any:
    # pydantic's lax mode reads True as 1; a flag given for a number is a mistake
    if isinstance(v, bool):
        raise ValueError(f"{v} is not a number")
    return v


# The kinds of value the configs share. Numbers are finite; a bool is not a number.
Number = Annotated[float, Field(allow_inf_nan=False), BeforeValidator(_not_a_bool)]
Integer = Annotated[int, BeforeValidator(_not_a_bool)]
Unit = Annotated[Number, Field(ge=0, le=1, description="must be in [0, 1]")]
OpenUnit = Annotated[Number, Field(gt=0, lt=1, description="must be in (0, 1)")]
Positive = Annotated[Number, Field(gt=0, description="must be > 0")]
NonNegativeInt = Annotated[Integer, Field(ge=0, description="must be an integer >= 0")]
PositiveInt = Annotated[Integer, Field(ge=1, description="must be an integer >= 1")]


def validated(naming: Naming) -> Callable[[type[T]], type[T]]:
    """The class as a frozen pydantic dataclass whose bad values raise ConfigError, each
    named by `naming` (the whole class is named one way: `section`, `variables`, ...)."""

    def wrap(cls: type[T]) -> type[T]:
        cls = pydantic_dataclass(frozen=True)(cls)
        names = list(cls.__pydantic_fields__)  # type: ignore[attr-defined]

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            given = dict(zip(names, args, strict=False)) | kwargs
            _check(self, ArgsKwargs(args, kwargs), given, naming)

        __init__.__doc__ = cls.__init__.__doc__
        cls.__init__ = __init__  # type: ignore[misc]
        return cls

    return wrap


def build(cls: type[T], values: Mapping[str, Any], naming: Naming) -> T:
    """`cls(**values)` for a `validated` class, with bad values named by `naming` instead
    of the class's own (a file's keys and environment variables fill the same class)."""
    return _check(object.__new__(cls), dict(values), values, naming)


def _check(obj: T, values: Any, given: Mapping[str, Any], naming: Naming) -> T:
    """`obj` filled with `values` as pydantic checks and converts them. The values are set
    one by one: an instance whose whole __dict__ pydantic hands over does not share its
    keys with its class's other instances, and CPython reads its attributes a little slower
    (about 2 ns a read, on paths that read the config per trade)."""
    cls = type(obj)
    try:
        valid = cls.__pydantic_validator__.validate_python(values)  # type: ignore[attr-defined]
    except ValidationError as e:
        raise config_error(e, cls, given, naming) from None
    for name, value in vars(valid).items():
        object.__setattr__(obj, name, value)
    return obj


def config_error(
    e: ValidationError, cls: type, given: Mapping[str, Any], naming: Naming
) -> ConfigError:
    """One message for all of `e`'s errors: `NAME=VALUE is invalid: RULE`, VALUE as given
    (the string from the environment, the number from JSON)."""
    problems = []
    for err in e.errors(include_url=False):
        path, info = _setting(cls, [str(p) for p in err["loc"]])
        value = given[path[0]] if len(path) == 1 and path[0] in given else err["input"]
        ours = err["type"] == "value_error"  # a validator of ours said what is wrong
        said = str(err["ctx"]["error"]) if ours else err["msg"]
        item = len(path) < len(err["loc"])  # about an item of the setting's list
        if item:
            said = f"item {err['loc'][len(path)]!r}: {said}"
        rule = info.description if info is not None else None
        if not rule:
            text = said
        elif ours or item:
            text = f"{rule} ({said})"
        else:
            text = rule  # the config's own words for what pydantic said
        problems.append(f"{naming('.'.join(path))}={value!r} is invalid: {text}")
    return ConfigError("; ".join(problems))


def _setting(cls: Any, loc: list[str]) -> tuple[list[str], FieldInfo | None]:
    """The part of an error's location that names a setting (through nested validated
    classes: `risk.pos_max`), and that setting's field."""
    path: list[str] = []
    info = None
    for part in loc:
        fields = getattr(cls, "__pydantic_fields__", None)
        if fields is None or part not in fields:
            break
        path.append(part)
        info = fields[part]
        cls = info.annotation
    return path, info
