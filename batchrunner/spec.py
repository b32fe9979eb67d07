"""The job spec: a TOML file read into frozen, validated models.

`load(path)` reads and checks the whole file before anything else happens; every problem is
reported at once, each naming the file, the `[section] key` and what is allowed. Paths in a
spec are relative to the spec file's folder and are resolved here, so the rest of the
package only sees absolute paths.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from . import prompts, specrules, wire
from .batchspec import BatchSection, http_url
from .errors import SpecError
from .parameters import Parameters

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JobSection(_Section):
    name: Annotated[str, Field(pattern=NAME_RE)]
    db: Path | None = None
    repeat: Annotated[int, Field(ge=1, le=100)] = 1


class InputSection(_Section):
    path: Path
    id_column: str | None = None
    format: Literal["csv", "parquet", "jsonl"] | None = None
    separator: Annotated[str, Field(min_length=1, max_length=1)] = ","
    encoding: Literal["utf8", "utf8-lossy", "latin1", "cp1252"] = "utf8"

    @property
    def table_format(self) -> str:
        return self.format or TABLE_SUFFIXES.get(self.path.suffix.lower(), "")


class PromptSection(_Section):
    system: str | None = None
    template: str | None = None
    messages_column: str | None = None
    on_empty: Literal["error", "skip", "send"] = "error"
    images: list[str] = Field(default_factory=list)
    videos: list[str] = Field(default_factory=list)
    cache: Literal["none", "system", "context"] = "none"
    context: str | None = None
    context_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptSection:
        if (self.template is None) == (self.messages_column is None):
            msg = "give exactly one of `template` (a string with {column} placeholders) or `messages_column`"
            raise ValueError(msg)
        if self.context is not None and self.context_file is not None:
            msg = "give `context` or `context_file`, not both"
            raise ValueError(msg)
        if self.cache == "system" and not self.system:
            msg = 'cache = "system" marks the system prompt for the explicit cache: set `system`'
            raise ValueError(msg)
        if self.cache == "context" and self.context is None and self.context_file is None:
            msg = 'cache = "context" marks a shared context: set `context` or `context_file`'
            raise ValueError(msg)
        return self

    def context_text(self) -> str | None:
        """The shared context sent before each prompt (read from context_file if given)."""
        if self.context_file is not None:
            try:
                return self.context_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                msg = f"[prompt] context_file: cannot read {self.context_file}: {exc}"
                raise SpecError(msg) from None
        return self.context


class ModelSection(_Section):
    name: Annotated[str, Field(min_length=1)]
    endpoint: Literal["auto", "text", "multimodal"] = "auto"
    context_tokens: Annotated[int, Field(ge=1)] | None = None

    @property
    def multimodal(self) -> bool:
        """Whether the model is served by the multimodal endpoint (by name, unless set)."""
        if self.endpoint != "auto":
            return self.endpoint == "multimodal"
        return wire.is_multimodal_model(self.name)


class Limits(_Section):
    requests_per_minute: Annotated[int, Field(gt=0)] = 600
    tokens_per_minute: Annotated[int, Field(gt=0)] | None = None
    concurrency: Annotated[int, Field(ge=1, le=20_000)] = 32
    processes: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 1
    max_retries: Annotated[int, Field(ge=0, le=100)] = 6
    throttle_patience_s: Annotated[float, Field(gt=0, le=86_400)] = 600
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 120
    backoff_initial_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    grace_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    commit_interval_ms: Annotated[int, Field(ge=0, le=10_000)] = 0
    max_cost_usd: Annotated[float, Field(gt=0)] | None = None
    max_cost_usd_per_run: Annotated[float, Field(gt=0)] | None = None
    max_requests: Annotated[int, Field(ge=1)] | None = None
    max_tokens_total: Annotated[int, Field(ge=1)] | None = None
    breaker_window: Annotated[int, Field(ge=0, le=100_000)] = 50
    breaker_failure_ratio: Annotated[float, Field(gt=0, le=1)] = 0.8


class PricingSection(_Section):
    """Price overrides and additions, shaped like the shipped price table's `[models]`."""

    models: dict[str, dict[str, Any]] = Field(default_factory=dict)


class OutputSection(_Section):
    path: Path
    column_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_]*$")] = ""
    parse_json: bool = False
    json_retries: Annotated[int, Field(ge=0, le=10)] = 0

    @property
    def table_format(self) -> str:
        return TABLE_SUFFIXES.get(self.path.suffix.lower(), "")


MODES = ("online", "batch", "auto", "batch-chat")


class ApiSection(_Section):
    protocol: Literal["dashscope", "openai"] = "dashscope"
    mode: Literal["online", "batch", "auto", "batch-chat"] = "online"
    region: Literal["intl", "cn"] = "intl"
    base_url: str | None = None
    api_key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = "DASHSCOPE_API_KEY"
    api_key_file: Path | None = None
    allow_insecure_http: bool = False

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return http_url(value, "such as https://dashscope-intl.aliyuncs.com/api/v1")


class ScaleSection(_Section):
    """Where the job runs: this machine, or shards over a Ray cluster (rayengine.py)."""

    engine: Literal["local", "ray"] = "local"
    address: Annotated[str, Field(min_length=1)] | None = None  # a Ray cluster; none: a local one
    shards: Annotated[int, Field(ge=1, le=100_000)] | None = None  # none: 4 per CPU of the cluster
    shared_dir: Annotated[str, Field(min_length=1)] | None = None  # a path every node sees, or a URI
    snapshot_s: Annotated[float, Field(gt=0, le=3600)] = 5.0


class JobSpec(_Section):
    """A whole job spec. `source_path` and `digest` are filled in by `load`."""

    job: JobSection
    input: InputSection
    prompt: PromptSection
    model: ModelSection
    parameters: Parameters = Parameters()
    limits: Limits = Limits()
    output: OutputSection
    api: ApiSection = ApiSection()
    batch: BatchSection = BatchSection()
    pricing: PricingSection = PricingSection()
    scale: ScaleSection = ScaleSection()
    source_path: Path | None = Field(default=None, exclude=True)
    digest: str = Field(default="", exclude=True)

    @model_validator(mode="after")
    def _across_sections(self) -> JobSpec:
        problems = []
        multimodal = self.model.multimodal or self.api.protocol == "openai"
        if (self.prompt.images or self.prompt.videos) and not multimodal:
            problems.append(
                f"[prompt] images / videos need a multimodal model; {self.model.name!r} uses the text "
                'endpoint (set [model] endpoint = "multimodal" if it is a vision model)'
            )
        p = self.parameters
        if (p.vl_high_resolution_images or p.vl_enable_image_hw_output) and not multimodal:
            problems.append("[parameters] vl_* options apply to vision models on the multimodal endpoint")
        problems += specrules.budget_problems(self)
        problems += specrules.mode_problems(self)
        problems += specrules.scale_problems(self)
        if self.output.json_retries and not self.output.parse_json:
            problems.append("[output] json_retries needs parse_json = true")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def cost_limited(self) -> bool:
        """Whether a cost budget (of the job or of each run) is set."""
        return self.limits.max_cost_usd is not None or self.limits.max_cost_usd_per_run is not None

    @property
    def batched(self) -> bool:
        """Whether the job goes through the Batch API (mode batch, or auto before its deadline)."""
        return self.api.mode in ("batch", "auto")

    @property
    def db_path(self) -> Path:
        if self.job.db is not None:
            return self.job.db
        return self.output.path.parent / f"{self.job.name}.sqlite"

    def with_overrides(
        self,
        *,
        db: Path | None = None,
        output: Path | None = None,
        max_cost_usd: float | None = None,
        max_cost_usd_per_run: float | None = None,
    ) -> JobSpec:
        """A copy with the store or output path replaced (CLI --db / --output), or a budget
        (--max-cost: the job's max_cost_usd; --max-cost-per-run: max_cost_usd_per_run).

        Replacing the output does not move the store: it stays where the spec puts it.
        """
        spec = self
        if db is None and output is not None:
            db = self.db_path
        if db is not None:
            spec = spec.model_copy(update={"job": spec.job.model_copy(update={"db": db.resolve()})})
        if output is not None:
            out = spec.output.model_copy(update={"path": output.resolve()})
            spec = spec.model_copy(update={"output": out})
            _check_table_suffix(spec.output.path, "output", str(output))
        if db is not None or output is not None:
            clashes = specrules.path_clashes(spec, output="--output" if output is not None else "[output] path")
            if clashes:
                raise SpecError("; ".join(clashes))
        budgets = {"max_cost_usd": max_cost_usd, "max_cost_usd_per_run": max_cost_usd_per_run}
        budgets = {k: v for k, v in budgets.items() if v is not None}
        if budgets:
            raw = spec.model_dump(by_alias=True)
            raw["limits"].update(budgets)
            try:
                checked = JobSpec.model_validate(raw)
            except ValidationError as exc:
                problems = "; ".join(_describe(e) for e in exc.errors())
                flags = " / ".join("--max-cost" + ("-per-run" if "run" in k else "") for k in budgets)
                raise SpecError(f"{flags}: {problems}") from None
            spec = checked.model_copy(update={"source_path": spec.source_path, "digest": spec.digest})
        return spec

    def with_scale(
        self, *, engine: str | None = None, address: str | None = None, shards: int | None = None
    ) -> JobSpec:
        """A copy with [scale] engine / address / shards replaced (CLI --engine, --address, --shards)."""
        changes = {k: v for k, v in (("engine", engine), ("address", address), ("shards", shards)) if v is not None}
        if not changes:
            return self
        raw = self.model_dump(by_alias=True)
        raw["scale"].update(changes)
        try:
            checked = JobSpec.model_validate(raw)
        except ValidationError as exc:
            raise SpecError("; ".join(_describe(e) for e in exc.errors())) from None
        return checked.model_copy(update={"source_path": self.source_path, "digest": self.digest})


# --------------------------------------------------------------------------- loading

_SECTIONS: dict[str, type[BaseModel]] = {
    "job": JobSection,
    "input": InputSection,
    "prompt": PromptSection,
    "model": ModelSection,
    "parameters": Parameters,
    "limits": Limits,
    "output": OutputSection,
    "api": ApiSection,
    "batch": BatchSection,
    "pricing": PricingSection,
    "scale": ScaleSection,
}


def _where(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if not parts:
        return "(top level)"
    if len(parts) == 1:
        return f"[{parts[0]}]" if parts[0] in _SECTIONS else parts[0]
    return f"[{parts[0]}] " + ".".join(parts[1:])


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    if len(loc) == 1:
        return list(_SECTIONS)
    section = _SECTIONS.get(str(loc[0]))
    return list(section.model_fields) if section else []


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        near = difflib.get_close_matches(key, _known_keys(loc), n=1, cutoff=0.6)
        hint = f"; did you mean `{near[0]}`?" if near else ""
        allowed = ", ".join(_known_keys(loc))
        return f"{_where(loc)}: unknown key{hint} (known keys: {allowed})"
    if kind == "missing":
        return f"{_where(loc)}: required key is missing"
    message = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{_where(loc)}: {message}{shown}"


def _check_table_suffix(path: Path, section: str, shown: str) -> None:
    if path.suffix.lower() not in TABLE_SUFFIXES:
        msg = f"[{section}] path: {shown!r} must end in .csv, .parquet or .jsonl"
        raise SpecError(msg)


def _resolve(base: Path, raw: dict[str, Any]) -> None:
    """Make relative paths in the raw TOML absolute, relative to the spec file's folder."""
    for section, key in (
        ("input", "path"),
        ("output", "path"),
        ("job", "db"),
        ("prompt", "context_file"),
        ("api", "api_key_file"),
    ):
        value = raw.get(section, {}).get(key) if isinstance(raw.get(section), dict) else None
        if isinstance(value, str) and value:
            raw[section][key] = str((base / Path(value).expanduser()).resolve())


def load(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a job spec. Raises SpecError listing every problem found."""
    spec_path = Path(path)
    try:
        data = spec_path.read_bytes()
    except FileNotFoundError:
        msg = f"{spec_path}: job spec not found"
        raise SpecError(msg) from None
    except OSError as exc:
        msg = f"{spec_path}: cannot read the job spec: {exc.strerror}"
        raise SpecError(msg) from None
    try:
        raw = tomllib.loads(data.decode("utf-8").removeprefix("\ufeff"))  # a BOM (Notepad) is not content
    except UnicodeDecodeError as exc:
        msg = f"{spec_path}: the job spec is not UTF-8 text (byte {exc.start})"
        raise SpecError(msg) from None
    except tomllib.TOMLDecodeError as exc:
        msg = f"{spec_path}: invalid TOML: {exc}"
        raise SpecError(msg) from None
    return from_dict(raw, base_dir=spec_path.resolve().parent, name=str(spec_path), digest_of=data)


def from_dict(raw: dict[str, Any], *, base_dir: Path, name: str = "<spec>", digest_of: bytes | None = None) -> JobSpec:
    """Validate an already-parsed spec (the Python API's entry point)."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    as_written = {s: str(raw[s].get("path")) for s in ("input", "output") if isinstance(raw.get(s), dict)}
    _resolve(base_dir, raw)
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "\n  ".join(_describe(e) for e in exc.errors())
        msg = f"{name}: {exc.error_count()} problem(s) in the job spec:\n  {problems}"
        raise SpecError(msg) from None
    try:
        if spec.input.format is None:
            _check_table_suffix(spec.input.path, "input", as_written["input"])
        _check_table_suffix(spec.output.path, "output", as_written["output"])
        if spec.prompt.template is not None:
            prompts.parse_template(spec.prompt.template)
    except SpecError as exc:
        raise SpecError(f"{name}: {exc}") from None
    clashes = specrules.path_clashes(spec)
    if clashes:
        raise SpecError(f"{name}: " + "; ".join(clashes))
    digest = hashlib.sha256(digest_of if digest_of is not None else repr(raw).encode()).hexdigest()
    return spec.model_copy(update={"source_path": Path(name), "digest": digest})
