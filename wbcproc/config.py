"""Configuration: shipped defaults merged with a user's TOML file, and the reference intervals.

One resolved :class:`Settings` object travels through the pipeline (timm's "single resolved data config"
idea), so every step reads the same values and the report can record where they came from.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from wbcproc.classes import WBC_CLASSES


class ConfigError(ValueError):
    """A configuration or reference-interval file is missing or malformed."""


@dataclass(frozen=True)
class ReferenceIntervals:
    """Reference intervals for one population, with their provenance."""

    name: str
    version: str
    population: str
    source: str
    percent: dict[str, tuple[float, float]]
    absolute: dict[str, tuple[float, float]]
    nrbc_max_per_100_wbc: float
    path: str = ""
    age_groups: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["percent"] = {k: list(v) for k, v in self.percent.items()}
        d["absolute"] = {k: list(v) for k, v in self.absolute.items()}
        d["age_groups"] = list(self.age_groups)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceIntervals:
        """The intervals a report was made with (its JSON ``config.reference_intervals``): a final report is
        judged against the same intervals as its preliminary one."""
        return cls(
            name=d["name"],
            version=str(d["version"]),
            population=d.get("population", ""),
            source=d.get("source", ""),
            percent={k: (float(v[0]), float(v[1])) for k, v in d["percent"].items()},
            absolute={k: (float(v[0]), float(v[1])) for k, v in d.get("absolute", {}).items()},
            nrbc_max_per_100_wbc=float(d["nrbc_max_per_100_wbc"]),
            path=d.get("path", ""),
            age_groups=tuple(d.get("age_groups", ())),
        )


@dataclass(frozen=True)
class Settings:
    """The resolved settings (``load_settings``).  Their defaults are defined once, in
    ``data/default_config.toml``; their types and ranges in ``_ConfigFile``."""

    max_pixels: int
    min_side_px: int
    field_min_px: int
    marker_files: tuple[str, ...]
    batch_size: int
    threads: int
    review_threshold: float | None
    min_wbc: int
    max_review_share: float
    reference: ReferenceIntervals
    hl7: bool  # also write <id>.hl7 (ORU^R01 v2.5.1) beside the other reports
    hl7_sending_facility: str
    hl7_receiving_application: str
    source: str = "defaults"

    def outputs(self) -> dict[str, Any]:
        """The ``[outputs]`` settings as a report records them (a final report writes what its preliminary did)."""
        return {
            "hl7": self.hl7,
            "hl7_sending_facility": self.hl7_sending_facility,
            "hl7_receiving_application": self.hl7_receiving_application,
        }

    def config_hash(self) -> str:
        """A short hash of everything that changes results, for traceability in reports."""
        payload = asdict(self)
        payload.pop("source", None)
        payload.pop("threads", None)
        payload.pop("batch_size", None)
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {str(path)!r} is not valid TOML: {exc}") from None


def _interval(value: Any, where: str) -> tuple[float, float]:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or value[0] > value[1]
    ):
        raise ConfigError(f"{where}: expected [low, high] with low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def load_reference_intervals(path: str | Path | None = None) -> ReferenceIntervals:
    """Read a reference-interval file; ``None`` reads the shipped adult defaults."""
    if path is None:
        ref = resources.files("wbcproc") / "data" / "reference_intervals.toml"
        with ref.open("rb") as fh:
            raw = tomllib.load(fh)
        shown = "wbcproc/data/reference_intervals.toml"
    else:
        raw = _read_toml(Path(path), "reference-interval file")
        shown = str(path)
    for key in ("name", "version", "source", "percent"):
        if key not in raw:
            raise ConfigError(f"reference-interval file {shown!r} lacks the required key {key!r}")
    percent = {}
    for cls in WBC_CLASSES:
        if cls not in raw["percent"]:
            raise ConfigError(f"{shown}: [percent] has no interval for {cls!r}")
        percent[cls] = _interval(raw["percent"][cls], f"{shown}: percent.{cls}")
    absolute = {
        cls: _interval(v, f"{shown}: absolute.{cls}")
        for cls, v in raw.get("absolute", {}).items()
        if cls in WBC_CLASSES
    }
    unknown = [k for k in [*raw["percent"], *raw.get("absolute", {})] if k not in WBC_CLASSES]
    if unknown:
        raise ConfigError(f"{shown}: unknown class names {unknown}; expected some of {list(WBC_CLASSES)}")
    nrbc = float(raw.get("nrbc", {}).get("max_per_100_wbc", 0.0))
    return ReferenceIntervals(
        name=str(raw["name"]),
        version=str(raw["version"]),
        population=str(raw.get("population", "")),
        source=" ".join(str(raw["source"]).split()),
        percent=percent,
        absolute=absolute,
        nrbc_max_per_100_wbc=nrbc,
        path=shown,
        age_groups=tuple(str(a).lower() for a in raw.get("age_groups", [])),
    )


_KNOWN = {
    "input": {"max_pixels", "min_side_px", "field_min_px", "marker_files"},
    "inference": {"batch_size", "threads", "review_threshold"},
    "flags": {"min_wbc", "max_review_share"},
    "reference": {"file"},
    "outputs": {"hl7", "hl7_sending_facility", "hl7_receiving_application"},
}


def _merge_user(merged: dict[str, Any], path: Path) -> None:
    """Merge a user's config file over the defaults, key by key; unknown sections or keys are errors."""
    user = _read_toml(path, "config file")
    for section, values in user.items():
        if section not in _KNOWN or not isinstance(values, dict):
            raise ConfigError(
                f"config file {str(path)!r}: unknown section [{section}]; expected one of {sorted(_KNOWN)}"
            )
        bad = set(values) - _KNOWN[section]
        if bad:
            raise ConfigError(
                f"config file {str(path)!r}: unknown keys {sorted(bad)} in [{section}]; "
                f"expected some of {sorted(_KNOWN[section])}"
            )
        merged.setdefault(section, {}).update(values)


class _Section(BaseModel):
    # strict: a TOML string is never read as a number or a list ("two" threads, marker_files = "READY")
    model_config = ConfigDict(extra="forbid", strict=True)


class _Input(_Section):
    max_pixels: int = Field(gt=0)
    min_side_px: int = Field(gt=0)
    field_min_px: int = Field(gt=0)
    marker_files: list[str]


class _Inference(_Section):
    batch_size: int = Field(gt=0)
    threads: int = Field(ge=0)
    review_threshold: float | None = Field(default=None, ge=0.0, le=1.0)


class _Flags(_Section):
    min_wbc: int = Field(ge=0)
    max_review_share: float = Field(ge=0.0, le=1.0)


class _Reference(_Section):
    file: str | None = None


class _Outputs(_Section):
    hl7: bool
    hl7_sending_facility: str
    hl7_receiving_application: str


class _ConfigFile(_Section):
    """The configuration's types and ranges (its values: ``data/default_config.toml`` merged with the user's)."""

    input: _Input
    inference: _Inference
    flags: _Flags
    reference: _Reference
    outputs: _Outputs


def _default_toml() -> dict[str, Any]:
    with (resources.files("wbcproc") / "data" / "default_config.toml").open("rb") as fh:
        return tomllib.load(fh)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of a configuration file, for editors and the docs: types and ranges from
    ``_ConfigFile``, defaults from ``data/default_config.toml``, every key optional (a user's file is merged
    over the defaults key by key).  Shipped as ``data/config.schema.json`` (``python -m wbcproc.config``)."""
    schema = _ConfigFile.model_json_schema()
    schema.pop("required", None)
    schema["title"] = "wbc configuration"
    schema["description"] = (
        "A wbc configuration file (TOML; `wbc ... --config FILE` or $WBC_CONFIG), merged key by key over the defaults."
    )
    for section, values in _default_toml().items():
        ref = schema["properties"][section].pop("$ref").rsplit("/", 1)[1]
        definition = schema["$defs"].pop(ref)
        definition.pop("required", None)
        definition["title"] = f"[{section}]"
        for key, value in values.items():
            definition["properties"][key]["default"] = value
        schema["properties"][section] = definition
    schema.pop("$defs", None)
    return schema


_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": 'a list, e.g. ["READY"]',
    "greater_than": "a number > {gt}",
    "greater_than_equal": "a number >= {ge}",
    "less_than_equal": "a number <= {le}",
}


def _config_error(source: str, exc: ValidationError) -> ConfigError:
    """One line: the first bad key, its value and what was expected (and how many more are bad)."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    section, key, *rest = [*err["loc"], "", ""]
    where = f"[{section}] {key}" + "".join(f"[{i}]" for i in rest if i != "")
    expected = _EXPECTED.get(err["type"], err["msg"]).format(**err.get("ctx", {}))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ConfigError(f"config {source!r}: {where} = {err['input']!r}; expected {expected}{more}")


def load_settings(path: str | Path | None = None) -> Settings:
    """Defaults merged with ``path`` (or ``$WBC_CONFIG`` when ``path`` is None)."""
    if path is None and os.environ.get("WBC_CONFIG"):
        path = os.environ["WBC_CONFIG"]
    merged = _default_toml()
    source = "defaults"
    base_dir = Path.cwd()
    if path is not None:
        _merge_user(merged, Path(path))
        source = str(path)
        base_dir = Path(path).resolve().parent
    try:
        cfg = _ConfigFile.model_validate(merged)
    except ValidationError as exc:
        raise _config_error(source, exc) from None
    ref_path = None if cfg.reference.file is None else Path(cfg.reference.file)
    if ref_path is not None and not ref_path.is_absolute():
        ref_path = base_dir / ref_path
    reference = load_reference_intervals(ref_path)
    inp, inf, flg, outp = cfg.input, cfg.inference, cfg.flags, cfg.outputs
    return Settings(
        max_pixels=inp.max_pixels,
        min_side_px=inp.min_side_px,
        field_min_px=inp.field_min_px,
        marker_files=tuple(inp.marker_files),
        batch_size=inf.batch_size,
        threads=inf.threads,
        review_threshold=inf.review_threshold,
        min_wbc=flg.min_wbc,
        max_review_share=flg.max_review_share,
        reference=reference,
        hl7=outp.hl7,
        hl7_sending_facility=outp.hl7_sending_facility,
        hl7_receiving_application=outp.hl7_receiving_application,
        source=source,
    )


if __name__ == "__main__":
    print(json.dumps(config_schema(), indent=2))
