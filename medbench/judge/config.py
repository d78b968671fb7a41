"""Judge configuration: typed, validated, read from the environment (or passed explicitly).

The API key is held only in memory: it is excluded from ``repr``, from :meth:`JudgeConfig.describe`
(what results record) and from cache keys, so it never reaches logs, result files or the cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from medbench.errors import MedbenchError

ENV_MODEL = "MEDBENCH_JUDGE_MODEL"
ENV_BASE_URL = "MEDBENCH_JUDGE_BASE_URL"
ENV_API_KEY = "MEDBENCH_JUDGE_API_KEY"
ENV_CONCURRENCY = "MEDBENCH_JUDGE_CONCURRENCY"
ENV_MAX_RETRIES = "MEDBENCH_JUDGE_MAX_RETRIES"
ENV_TIMEOUT = "MEDBENCH_JUDGE_TIMEOUT"
ENV_MAX_TOKENS = "MEDBENCH_JUDGE_MAX_TOKENS"
ENV_CACHE = "MEDBENCH_JUDGE_CACHE"
ENV_PRICES = "MEDBENCH_JUDGE_PRICES"
ENV_SCORING = "MEDBENCH_JUDGE_SCORING"
ENV_SWITCH = "MEDBENCH_JUDGE"
ENV_PROGRESS = "MEDBENCH_JUDGE_PROGRESS"
ENV_RETRY_UNPARSEABLE = "MEDBENCH_JUDGE_RETRY_UNPARSEABLE"
ENV_ADAPTIVE = "MEDBENCH_JUDGE_ADAPTIVE"

DEFAULT_PROMPTS: dict[str, str] = {"facts": "facts-v1", "nli": "nli-v1", "claims": "claims-v1", "severity": "severity-v1"}
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
SCORING_MODES = ("tolerant", "authors")


@dataclass(frozen=True)
class Price:
    """US dollars per one million tokens."""

    input: float
    output: float


@dataclass
class JudgeConfig:
    """Everything that decides what the judge is asked and how.

    Attributes:
        model: Judge model name as the server knows it (``gpt-4.1``, a vLLM served name, ...).
        base_url: OpenAI-compatible endpoint (``.../v1``); ``None`` means OpenAI's.
        api_key: Secret; never written anywhere. Local servers that need none may leave it unset.
        concurrency: Requests in flight at once.
        max_retries: Retries after the first attempt, for 5xx, timeouts, connection errors and malformed
            bodies.
        max_rate_limit_retries: Retries after 429 answers (their own budget: a rate limit is not a fault).
        max_parse_retries: Times an answer the parser rejects is asked again. Once that many (plus one)
            unparseable answers are recorded for a request, later runs do not ask it again unless
            ``retry_unparseable``.
        retry_unparseable: Ask requests whose earlier answers were all unparseable once more.
        fail_fast_after: Stop the run after this many connection errors/timeouts, or this many identical
            rejections, while no request has succeeded.
        parse_check_window: Number of recent answers the unparseable-answer breaker looks at.
        parse_failure_threshold: Stop the run when more than this share of that window did not parse.
        adaptive_rate: Pace from ``x-ratelimit-*`` headers and halve the in-flight limit on 429s (AIMD);
            ``False`` keeps ``concurrency`` fixed.
        timeout: Seconds before one request counts as hung.
        backoff_base: First retry delay in seconds; doubles each retry (with jitter).
        backoff_max: Longest single retry delay in seconds.
        max_tokens: Completion token limit per request.
        temperature: Sampling temperature; 0 so the judge is as repeatable as the server allows.
        cache_path: SQLite cache file; ``None`` keeps answers in memory only.
        prices: Model name -> :class:`Price`, for the cost report.
        prompts: Prompt role -> prompt spec (``name-vN`` or a file path).
        scoring: ``tolerant`` (default, corrected parser, unparseable answers unscored) or ``authors``
            (their case-sensitive rules, for recomputing published numbers).
        progress: Show a progress bar.
    """

    model: str
    base_url: str | None = field(default=None, repr=False)  # may carry credentials in its query
    api_key: str | None = field(default=None, repr=False)
    concurrency: int = 16
    max_retries: int = 4
    max_rate_limit_retries: int = 12
    max_parse_retries: int = 2
    retry_unparseable: bool = False
    fail_fast_after: int = 8
    parse_check_window: int = 20
    parse_failure_threshold: float = 0.5
    adaptive_rate: bool = True
    timeout: float = 120.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    max_tokens: int = 1024
    temperature: float = 0.0
    cache_path: Path | None = None
    prices: Mapping[str, Price] = field(default_factory=dict)
    prompts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    scoring: str = "tolerant"
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.model or not self.model.strip():
            raise MedbenchError(f"judge model is empty: set {ENV_MODEL} or pass --model")
        if self.concurrency < 1:
            raise MedbenchError(f"judge concurrency must be >= 1, got {self.concurrency}: fix {ENV_CONCURRENCY} / --concurrency")
        if self.max_retries < 0:
            raise MedbenchError(f"judge max_retries must be >= 0, got {self.max_retries}: fix {ENV_MAX_RETRIES}")
        if self.max_rate_limit_retries < 0 or self.max_parse_retries < 0:
            raise MedbenchError("judge max_rate_limit_retries and max_parse_retries must be >= 0")
        if self.fail_fast_after < 1 or self.parse_check_window < 1 or not 0 <= self.parse_failure_threshold <= 1:
            raise MedbenchError("judge fail_fast_after and parse_check_window must be >= 1, parse_failure_threshold in [0, 1]")
        if self.timeout <= 0:
            raise MedbenchError(f"judge timeout must be > 0 seconds, got {self.timeout}: fix {ENV_TIMEOUT}")
        if self.scoring not in SCORING_MODES:
            raise MedbenchError(f"judge scoring must be one of {SCORING_MODES}, got {self.scoring!r}: fix {ENV_SCORING} / --scoring")
        unknown = set(self.prompts) - set(DEFAULT_PROMPTS)
        if unknown:
            raise MedbenchError(f"unknown judge prompt role(s) {sorted(unknown)}: use {sorted(DEFAULT_PROMPTS)}")
        self.prompts = {**DEFAULT_PROMPTS, **dict(self.prompts)}
        if self.cache_path is not None:
            self.cache_path = Path(self.cache_path).expanduser()

    @property
    def case_sensitive(self) -> bool:
        """Whether fact labels are scored with the authors' case-sensitive rules."""
        return self.scoring == "authors"

    @property
    def public_base_url(self) -> str:
        """The endpoint without credentials, query string or fragment: safe to record."""
        return scrub_url(self.base_url or OPENAI_DEFAULT_BASE_URL)

    def resolved_api_key(self) -> str:
        """The key to send. Local servers without auth get a placeholder (the client requires one).

        Raises:
            MedbenchError: OpenAI's own endpoint is used and no key is configured.
        """
        if self.api_key:
            return self.api_key
        if self.base_url is None or urlsplit(self.base_url).hostname == urlsplit(OPENAI_DEFAULT_BASE_URL).hostname:
            raise MedbenchError(f"no API key for the judge: set {ENV_API_KEY} (or OPENAI_API_KEY), or point {ENV_BASE_URL} at a local server")
        return "no-key"

    def price(self) -> Price | None:
        """The price of :attr:`model`, if the table has it."""
        return self.prices.get(self.model)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> JudgeConfig | None:
        """Build the configuration from environment variables.

        Args:
            env: Variables to read (default ``os.environ``).
            **overrides: Fields that win over the environment (``None`` values are ignored).

        Returns:
            The configuration, or ``None`` when no judge model is configured or ``MEDBENCH_JUDGE=off``.

        Raises:
            MedbenchError: A variable holds a value that cannot be used.
        """
        env = os.environ if env is None else env
        overrides = {key: value for key, value in overrides.items() if value is not None}
        if env.get(ENV_SWITCH, "").strip().lower() in ("0", "off", "false", "no"):
            return None
        model = overrides.pop("model", None) or env.get(ENV_MODEL, "").strip()
        if not model:
            return None
        values: dict[str, object] = {
            "base_url": env.get(ENV_BASE_URL) or env.get("OPENAI_BASE_URL") or None,
            "api_key": env.get(ENV_API_KEY) or env.get("OPENAI_API_KEY") or None,
            "concurrency": _int(env, ENV_CONCURRENCY, 16),
            "max_retries": _int(env, ENV_MAX_RETRIES, 4),
            "timeout": _float(env, ENV_TIMEOUT, 120.0),
            "max_tokens": _int(env, ENV_MAX_TOKENS, 1024),
            "scoring": env.get(ENV_SCORING, "tolerant").strip().lower() or "tolerant",
            "progress": _flag(env, ENV_PROGRESS, True),
            "retry_unparseable": _flag(env, ENV_RETRY_UNPARSEABLE, False),
            "adaptive_rate": _flag(env, ENV_ADAPTIVE, True),
        }
        cache = env.get(ENV_CACHE, "").strip()
        if cache.lower() in ("off", "none", "memory"):
            values["cache_path"] = None
        else:
            values["cache_path"] = Path(cache) if cache else default_cache_path()
        prices = env.get(ENV_PRICES, "").strip()
        if prices:
            values["prices"] = load_prices(Path(prices))
        values.update(overrides)
        return cls(model=str(model), **values)  # type: ignore[arg-type]

    def describe(self) -> dict[str, object]:
        """Secret-free description recorded with results (prompts are added by the runner)."""
        return {
            "model": self.model,
            "base_url": self.public_base_url,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "scoring": self.scoring,
        }


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/medbench/judge-cache.sqlite`` (``~/.cache`` when unset)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "medbench" / "judge-cache.sqlite"


def load_prices(path: Path) -> dict[str, Price]:
    """Read a price table: JSON or YAML mapping ``model -> {input: $/1M tokens, output: $/1M tokens}``.

    Raises:
        MedbenchError: Missing file or malformed entries.
    """
    if not path.is_file():
        raise MedbenchError(f"judge price table {path} does not exist: fix {ENV_PRICES} / --prices")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    table: dict[str, Price] = {}
    for model, entry in (data or {}).items():
        try:
            table[str(model)] = Price(input=float(entry["input"]), output=float(entry["output"]))
        except (TypeError, KeyError, ValueError):
            raise MedbenchError(
                f"judge price table {path}: entry {model!r} needs numeric 'input' and 'output' (USD per 1M tokens)"
            ) from None
    return table


def scrub_url(url: str) -> str:
    """Drop user info, query and fragment (where keys hide in some deployments)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise MedbenchError(f"{name}={raw!r} is not a switch: set it to 1 or 0")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise MedbenchError(f"{name}={raw!r} is not an integer: set it to a whole number") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise MedbenchError(f"{name}={raw!r} is not a number: set it to a number of seconds") from None
