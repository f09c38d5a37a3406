"""config.toml as nested frozen dataclasses; an unknown or mistyped key fails loudly with its name."""
from __future__ import annotations

import codecs
import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from memory import mark_shipped_beneath

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEVICES = ("auto", "cuda", "cpu")
CODERS = ("template", "llm", "mixed")
ON_UNAVAILABLE = ("fail", "template")
CLUSTER_BACKENDS = ("local", "ray")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class RunConfig:
    runs_dir: Path = Path("runs")
    memory_dir: Path = Path("memory")
    budget: int = 8
    device: str = "auto"
    coder: str = "template"
    training: bool = True              # evolve each op's forward and backward, timed together (--inference: forward only)
    workers: int = 0                   # evaluators judging a population of candidates at once (--workers; 0: auto)
    population: int = 0                # candidates proposed per step from the same history; 0: one per worker


@dataclass(frozen=True)
class CoderConfig:
    explore: float = 0.25
    test_rules: bool = True


@dataclass(frozen=True)
class EvaluatorConfig:
    start_timeout_s: float = 180.0
    load_timeout_s: float = 60.0
    compile_timeout_s: float = 300.0
    check_timeout_s: float = 600.0
    timing_timeout_s: float = 900.0
    timed_dtypes: tuple[str, ...] = ("bfloat16",)
    ceilings_cache: Path = Path("runs/ceilings.json")
    baselines_cache: Path = Path("runs/baselines")
    compile_ahead: int = 2
    search_candidate_s: float = 180.0


@dataclass(frozen=True)
class TimingConfig:
    rounds: int = 5
    warmup_ms: int = 25
    rep_ms: int = 100
    search_rounds: int = 3
    search_warmup_ms: int = 10
    search_rep_ms: int = 50
    rotate_mib: int = 256
    floor_slack: float = 0.9


@dataclass(frozen=True)
class PromotionConfig:
    margin: float = 0.02
    ab_rounds: int = 10


@dataclass(frozen=True)
class ClusterConfig:
    backend: str = "local"             # local: the pool's workers are threads of this process | ray: Ray actors
    address: str = ""                  # ray: the cluster to join ("auto", "ray://host:10001"); "": start one here


@dataclass(frozen=True)
class ModelConfig:
    assemble: bool = True
    bench: bool = True
    convergence_steps: int = 0


@dataclass(frozen=True)
class LLMConfig:
    base_url: str = ""                 # "" -> $OPENAI_BASE_URL, else OpenAI's own endpoint
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # name of the variable holding the key; "" -> the server takes none
    on_unavailable: str = "fail"       # fail | template: what a run does when the server cannot be used
    temperature: float = 0.2
    max_tokens: int = 4096
    timeout_s: float = 120.0
    retries: int = 2
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    run_token_budget: int = 0          # 0: no limit
    run_cost_budget: float = 0.0       # 0: no limit
    repairs: int = 2
    mixed_share: float = 0.5
    planner: bool = True
    reflector: bool = True
    lesson_confidence: float = 0.2
    give_up_after: int = 3


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    coder: CoderConfig = field(default_factory=CoderConfig)
    evaluator: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    source: Path | None = None

    def with_run(self, check_llm: bool = True, **changes: Any) -> "Config":
        """A copy with [run] keys overridden (command-line flags); None values leave a key as it is.
        `check_llm=False` skips the endpoint check (a replay needs no server)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        merged = dataclasses.replace(self.run, **changes)
        _validate_run(merged, "command line")
        config = dataclasses.replace(self, run=merged)
        if check_llm:
            _check_endpoint(config, "command line")
        return config

    @property
    def population(self) -> int:
        """Candidates each step of an op proposes and judges at once."""
        return self.run.population or self.run.workers

    def to_toml(self) -> str:
        """The resolved configuration, as written into each run folder. A template run's says nothing
        of the LLM: it used none."""
        data = {}
        for f in dataclasses.fields(self):
            if f.name == "source" or (f.name == "llm" and self.run.coder == "template"):
                continue
            table = dataclasses.asdict(getattr(self, f.name))
            data[f.name] = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                            for k, v in table.items()}
        return tomli_w.dumps(data)


def _coerce(table: str, key: str, value: Any, default: Any, base: Path, origin: str) -> Any:
    where = f"{origin}: [{table}].{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a path string, not {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, not {value!r}")
        return tuple(value)
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        if not math.isfinite(value):  # TOML has nan and inf; no setting means either
            raise ConfigError(f"{where} must be a finite number, not {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type")


def _validate_run(run: RunConfig, origin: str) -> None:
    if run.device not in DEVICES:
        raise ConfigError(f"{origin}: device must be one of {', '.join(DEVICES)}, not {run.device!r}")
    if run.coder not in CODERS:
        raise ConfigError(f"{origin}: coder must be one of {', '.join(CODERS)}, not {run.coder!r}")
    if run.budget < 1:
        raise ConfigError(f"{origin}: budget must be at least 1, not {run.budget}")
    if run.workers < 0:
        raise ConfigError(f"{origin}: workers must be 0 (as many as the machine suits) or more, not {run.workers}")
    if run.population < 0:
        raise ConfigError(f"{origin}: population must be 0 (one per worker) or more, not {run.population}")


def endpoint_configured(llm: LLMConfig) -> bool:
    """Whether any server is named: a base URL (config or $OPENAI_BASE_URL) or a key for OpenAI's own."""
    return bool(llm.base_url or os.environ.get("OPENAI_BASE_URL")
                or (llm.api_key_env and os.environ.get(llm.api_key_env)))


def _check_endpoint(config: Config, origin: str) -> None:
    if config.run.coder == "template" or config.llm.on_unavailable == "template":
        return
    if not endpoint_configured(config.llm):
        key = f"${config.llm.api_key_env}" if config.llm.api_key_env else "a key"
        raise ConfigError(f"{origin}: coder {config.run.coder!r} needs an LLM endpoint: set [llm].base_url or "
                          f"$OPENAI_BASE_URL (a local server), or {key} for OpenAI")


def _validate_llm(llm: LLMConfig, origin: str) -> None:
    if llm.on_unavailable not in ON_UNAVAILABLE:
        raise ConfigError(f"{origin}: [llm].on_unavailable must be one of {', '.join(ON_UNAVAILABLE)}, "
                          f"not {llm.on_unavailable!r}")
    if not llm.model:
        raise ConfigError(f"{origin}: [llm].model must name a model")
    if llm.max_tokens < 1 or llm.timeout_s <= 0 or llm.retries < 0 or llm.repairs < 0 or llm.give_up_after < 1:
        raise ConfigError(f"{origin}: [llm] needs max_tokens >= 1, timeout_s > 0, retries >= 0, repairs >= 0 "
                          f"and give_up_after >= 1")
    if min(llm.price_in_per_1k, llm.price_out_per_1k, llm.run_token_budget, llm.run_cost_budget) < 0:
        raise ConfigError(f"{origin}: [llm] prices and budgets cannot be negative")
    for name in ("mixed_share", "lesson_confidence"):
        if not 0.0 <= getattr(llm, name) <= 1.0:
            raise ConfigError(f"{origin}: [llm].{name} must lie in [0, 1]")
    if not 0.0 <= llm.temperature <= 2.0:
        raise ConfigError(f"{origin}: [llm].temperature must lie in [0, 2]")


# Numeric settings of the evaluator and its timing: a timeout or a measuring time of 0 or less, one
# timing round, or a negative margin would make every candidate time out or every promotion meaningless.
_POSITIVE = {"evaluator": ("start_timeout_s", "load_timeout_s", "compile_timeout_s", "check_timeout_s",
                           "timing_timeout_s"),
             "timing": ("warmup_ms", "rep_ms", "search_warmup_ms", "search_rep_ms", "rotate_mib")}
_AT_LEAST = {("timing", "rounds"): 1, ("timing", "search_rounds"): 1, ("promotion", "ab_rounds"): 2, ("promotion", "margin"): 0,
             ("model", "convergence_steps"): 0, ("evaluator", "compile_ahead"): 0,
             ("evaluator", "search_candidate_s"): 0}


def _validate_bounds(config: Config, origin: str) -> None:
    for table, keys in _POSITIVE.items():
        for key in keys:
            value = getattr(getattr(config, table), key)
            if value <= 0:
                raise ConfigError(f"{origin}: [{table}].{key} must be greater than 0, not {value}")
    for (table, key), least in _AT_LEAST.items():
        value = getattr(getattr(config, table), key)
        if value < least:
            raise ConfigError(f"{origin}: [{table}].{key} must be at least {least}, not {value}")
    if not 0 < config.timing.floor_slack <= 1:
        raise ConfigError(f"{origin}: [timing].floor_slack must lie in (0, 1], not {config.timing.floor_slack}")


def _validate(config: Config, origin: str, check_llm: bool = True) -> None:
    _validate_run(config.run, origin)
    _validate_llm(config.llm, origin)
    if check_llm:
        _check_endpoint(config, origin)
    if not 0.0 <= config.coder.explore <= 1.0:
        raise ConfigError(f"{origin}: [coder].explore must lie in [0, 1]")
    if config.cluster.backend not in CLUSTER_BACKENDS:
        raise ConfigError(f"{origin}: [cluster].backend must be one of {', '.join(CLUSTER_BACKENDS)}, "
                          f"not {config.cluster.backend!r}")
    _validate_bounds(config, origin)
    from kernels import DTYPES

    for dtype in config.evaluator.timed_dtypes:
        if dtype not in DTYPES:
            raise ConfigError(f"{origin}: [evaluator].timed_dtypes: unknown dtype {dtype!r}")


def _config_text(path: Path) -> str:
    """The file as text: TOML is UTF-8 by definition (whatever the locale), and a leading byte-order mark,
    which some editors write, is dropped rather than read as a stray character."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); save it as UTF-8") from None


def load_config(path: Path, check_llm: bool = True) -> Config:
    """`check_llm=False` for commands that talk to no server (report, runs, a replay)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(_config_text(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    base = path.resolve().parent
    defaults = Config()
    tables = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
    built = {}
    for name, value in raw.items():
        if name not in tables:
            raise ConfigError(f"{path}: unknown table [{name}] (known: {', '.join(tables)})")
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {name} must be a table")
    for name in tables:
        default_table = getattr(defaults, name)
        known = {f.name for f in dataclasses.fields(default_table)}
        given = raw.get(name, {})
        unknown = set(given) - known
        if unknown:
            raise ConfigError(f"{path}: unknown key [{name}].{sorted(unknown)[0]} (known: {', '.join(sorted(known))})")
        values = {}
        for f in dataclasses.fields(default_table):
            default = getattr(default_table, f.name)
            if f.name in given:
                values[f.name] = _coerce(name, f.name, given[f.name], default, base, str(path))
            elif isinstance(default, Path):
                values[f.name] = base / default
            else:
                values[f.name] = default
        built[name] = type(default_table)(**values)
    config = Config(**built, source=path.resolve())
    _validate(config, str(path), check_llm)
    return config


def find_config(explicit: str | os.PathLike | None = None) -> Path | None:
    """--config, else $EVOLVE_CONFIG, else ./config.toml, else (unless $EVOLVE_WORKSPACE names a workspace)
    the config.toml of a source checkout; None when none applies: an installed package, or a workspace
    asked for (the workspace settings apply, see workspace_config)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("EVOLVE_CONFIG"):
        return Path(os.environ["EVOLVE_CONFIG"])
    local = Path.cwd() / "config.toml"
    if local.is_file():
        return local
    if os.environ.get("EVOLVE_WORKSPACE"):
        return None
    checkout = PROJECT_ROOT / "config.toml"
    return checkout if checkout.is_file() else None


def workspace_folder() -> Path:
    """Where an installed evolve keeps a user's runs and memory: $EVOLVE_WORKSPACE, else the user's data
    folder ($XDG_DATA_HOME/evolve, by default ~/.local/share/evolve); never the installation itself."""
    if os.environ.get("EVOLVE_WORKSPACE"):
        return Path(os.environ["EVOLVE_WORKSPACE"]).expanduser().resolve()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser().resolve() / "evolve"


def workspace_config(check_llm: bool = True) -> Config:
    """The default settings with runs and memory in the workspace folder, the project's shipped rulebook
    and kernels read beneath them as read-only defaults (the memory folder says so in its layers.toml)."""
    folder = workspace_folder()
    defaults = Config()
    run = dataclasses.replace(defaults.run, runs_dir=folder / "runs", memory_dir=folder / "memory")
    evaluator = dataclasses.replace(defaults.evaluator, ceilings_cache=folder / "runs" / "ceilings.json",
                                    baselines_cache=folder / "runs" / "baselines")
    config = dataclasses.replace(defaults, run=run, evaluator=evaluator, source=None)
    _validate(config, f"the workspace {folder}", check_llm)
    mark_shipped_beneath(folder / "memory")
    return config


def resolve_config(explicit: str | os.PathLike | None = None, check_llm: bool = True) -> Config:
    """The configuration a command runs with: the config file found, else the workspace's."""
    path = find_config(explicit)
    return workspace_config(check_llm) if path is None else load_config(path, check_llm)
