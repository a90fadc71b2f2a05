"""Stage configs: one dataclass per stage, loaded from CLI options and TOML.

A stage declares its options once, as dataclass fields built with `option(...)`. The CLI turns the
fields into typer options (`cldg/cli.py`), a TOML file supplies a table per stage whose keys are the
field names, and an option given on the command line wins over the file. `fingerprint_config` gives
the part of a config that affects the stage's output (fields marked `fingerprint=False` are left out).
"""
from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cldg.errors import CldgError


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
           fingerprint: bool = True, default_factory: Any = dataclasses.MISSING, flag: str | None = None,
           fingerprinted_unless: Any = dataclasses.MISSING):
    """A config field that is also a CLI option.

    choices: allowed string values; fingerprint=False: the value does not change the output (threads,
    batch size for scoring, paths of inputs already fingerprinted, ...); flag: CLI name if not derived;
    fingerprinted_unless: in the fingerprint only when it is not this value, the behaviour from before the
    option existed (so that the artifacts made then keep their fingerprints and are reused).
    """
    meta = {"help": help, "choices": choices, "fingerprint": fingerprint, "flag": flag}
    if fingerprinted_unless is not dataclasses.MISSING:
        meta["fingerprinted_unless"] = fingerprinted_unless
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CommonOptions:
    """Options every stage takes."""

    workdir: Path = option(Path("cldg-work"), "Directory that holds every artifact.", fingerprint=False)
    config: Path | None = option(None, "TOML config: one table per stage, keys are long option names.",
                                 fingerprint=False)
    force: bool = option(False, "Rerun even if a complete artifact with the same fingerprint exists.",
                         fingerprint=False)
    seed: int = option(13, "Random seed (python, numpy, torch).")
    device: str = option("auto", "auto | cpu | cuda[:N]", fingerprint=False)
    deterministic: bool = option(True, "Bit-reproducible runs: deterministic torch algorithms, a fixed thread count, "
                                 "one fastText worker (see README, Reproducibility).", fingerprint=False)
    torch_threads: int = option(0, "torch CPU threads (0: OMP_NUM_THREADS, else the machine's cores, capped at 8; fixed for the whole run).",
                          fingerprint=False)

    def __post_init__(self):  # checked when read, before a stage looks for its artifact (a cached one too)
        import re

        if not isinstance(self.device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise CldgError(f"--device {self.device!r}: expected auto, cpu or cuda[:N]")
        if self.torch_threads < 0:
            raise CldgError(f"--torch-threads {self.torch_threads}: must be at least 1, or 0 (OMP_NUM_THREADS, else "
                            "the machine's cores)")


def options_like(cls: type, omit: tuple[str, ...] = (), **defaults: Any) -> type:
    """A dataclass of `cls`'s command-line options (its fields made with `option`), less `omit`, with other
    defaults: `name=value`, or `name=(value, help)` where the option means something else in this stage. A
    stage's Config inherits from it, so that an option several stages share is declared once (TrainOptions,
    DecodingOptions) and each stage states only what differs."""
    hints = typing.get_type_hints(cls)
    unknown = (set(defaults) | set(omit)) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no options {sorted(unknown)}")
    specs = []
    for f in dataclasses.fields(cls):
        if f.name in omit or "help" not in f.metadata:
            continue
        default, help = f.default, f.metadata["help"]
        if f.name in defaults:
            default, help = defaults[f.name] if isinstance(defaults[f.name], tuple) else (defaults[f.name], help)
        specs.append((f.name, hints[f.name], field(default=default, metadata={**f.metadata, "help": help})))
    return dataclasses.make_dataclass(f"{cls.__name__}Fields", specs)


def options_from(cls: type, source: Any, **values: Any):
    """`cls` built from the fields of the dataclass `source` that it also has (and `values`); the others keep
    `cls`'s defaults. E.g. the TrainOptions of a stage's Config."""
    names = {f.name for f in dataclasses.fields(source)}
    return cls(**{f.name: getattr(source, f.name) for f in dataclasses.fields(cls) if f.name in names}, **values)


def field_type(cls: type, f: dataclasses.Field) -> Any:
    return typing.get_type_hints(cls)[f.name]


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for X or X | None."""
    args = typing.get_args(tp)
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def coerce(cls: type, name: str, value: Any, where: str) -> Any:
    """Check and convert a TOML value for field `name` of `cls`; `where` names the source for errors."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        known = ", ".join(sorted(fields))
        raise CldgError(f"{where}: unknown key {name!r} (known: {known})")
    f = fields[name]
    tp, optional = _base_type(field_type(cls, f))
    if value is None and optional:
        return None
    bad = CldgError(f"{where}: {name} = {value!r} should be of type {getattr(tp, '__name__', tp)}")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        try:
            value = float(value)
        except OverflowError:
            raise CldgError(f"{where}: {name} = {value} is too large for a float") from None
    elif tp is str:
        if not isinstance(value, str):
            raise bad
    elif tp is Path:
        if not isinstance(value, str):
            raise bad
        if "\x00" in value or not value:
            raise CldgError(f"{where}: {name} = {value!r} is not a usable path")
        value = Path(value)
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise CldgError(f"{where}: {name} = {value!r} is not one of {', '.join(choices)}")
    return value


def load_toml(path: Path) -> dict[str, Any]:
    """Read a TOML config; a syntax error is one line naming the file and position."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise CldgError(f"--config {path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise CldgError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise CldgError(f"{path}: not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:  # an integer of over 4,300 digits, nesting too deep
        raise CldgError(f"{path}: invalid TOML: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    except OSError as exc:
        raise CldgError(f"--config {path}: cannot read ({exc.strerror or exc})") from None


def config_from_table(cls: type, table: dict[str, Any], where: str, overrides: dict[str, Any] | None = None):
    """Build `cls` from a TOML table (validated) and overrides (already typed, e.g. from the CLI)."""
    if not isinstance(table, dict):
        raise CldgError(f"{where}: expected a table of options, got {type(table).__name__}")
    values = {k: coerce(cls, k, v, where) for k, v in table.items()}
    values.update(overrides or {})
    return cls(**values)


def fingerprint_config(cfg: Any) -> dict[str, Any]:
    """The fields of a stage config that affect its output, as JSON-able values, and the revision of the model it
    names when a fix has changed that model (cldg.choices.MODEL_REVISIONS; absent otherwise, so the fingerprints
    of models never revised stay as they were)."""
    from cldg.choices import MODEL_REVISIONS

    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("fingerprint", True):
            v = getattr(cfg, f.name)
            if "fingerprinted_unless" in f.metadata and v == f.metadata["fingerprinted_unless"]:
                continue
            out[f.name] = str(v) if isinstance(v, Path) else v
    if isinstance(out.get("model"), str) and out["model"] in MODEL_REVISIONS:
        out["model_revision"] = MODEL_REVISIONS[out["model"]]
    return out


def to_jsonable(cfg: Any) -> dict[str, Any]:
    return {f.name: (str(getattr(cfg, f.name)) if isinstance(getattr(cfg, f.name), Path) else getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)}
