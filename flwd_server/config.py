"""Settings: one field, one type, one description; validated with the key's name.

Precedence, lowest first: built-in defaults, the YAML file, ``FLWD_*``
environment variables (``FLWD_LIMITS__MAX_CONCURRENT_RUNS=8``), then CLI flags.
An unknown key or a wrong type stops start-up with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .formats.source_spec import validate_source_spec
from .formats.yaml_loader import DuplicateKeyError, load_yaml
from .logs import redact_url
from .models import Profile

PROFILES = tuple(p.value for p in Profile)
PARKED_STREAMS = 1000  # default streams per worker where one holds no thread (flwd :serve): all in any worker


def _opt(
    default: Any,
    help: str,
    choices: tuple[Any, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    flag: str | None = None,
    path: str | None = None,
) -> Any:
    """Declare a setting; ``flag`` is its ``flwd :serve`` option, ``path`` ("file" or "directory") what it names."""
    meta = {"help": help, "choices": choices, "minimum": minimum, "maximum": maximum, "flag": flag, "path": path}
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AuthSettings:
    issuer: str | None = _opt(None, "Required `iss` claim of bearer tokens.")
    audience: str | None = _opt(None, "Required `aud` claim of bearer tokens.")
    jwk_file: str | None = _opt(
        None, "JWKS file with the public keys tokens are verified against; re-read when it changes."
    )
    leeway: int = _opt(30, "Seconds of clock skew allowed on exp, nbf and iat.", minimum=0)
    algorithms: tuple[str, ...] = _opt(("RS256", "ES256", "EdDSA"), "Signature algorithms accepted.")
    token_cache_size: int = _opt(
        4096, "Verified tokens kept in memory (until they expire or the JWKS changes).", minimum=0
    )


@dataclass(frozen=True)
class ContainerSettings:
    runtime: str = _opt(
        "auto", "Container engine: auto finds a Docker or podman socket.", ("auto", "docker", "podman", "none")
    )
    socket: str | None = _opt(None, "Engine socket URL (unix:///run/podman/podman.sock); overrides discovery.")
    verify_signatures: str = _opt(
        "enforce", "cosign key-based signature check of images and add-ons.", ("enforce", "permissive", "disabled")
    )
    signature_keys: tuple[str, ...] = _opt((), "PEM public keys (paths) whose signatures are trusted.")
    allowed_registries: tuple[str, ...] = _opt((), "Registries images and OCI add-ons may come from (host[:port]).")
    insecure_registries: tuple[str, ...] = _opt((), "Registries reached over plain HTTP (loopback test registries).")
    pull_timeout: float = _opt(300.0, "Seconds a pull may take.", minimum=1)
    api_timeout: float = _opt(60.0, "Seconds an engine API call may take (streams and waits have none).", minimum=1)
    registry_timeout: float = _opt(30.0, "Seconds a registry request may take (signatures, add-ons).", minimum=1)


@dataclass(frozen=True)
class LimitsSettings:
    max_concurrent_runs: int = _opt(4, "Runs executing at once across all worker processes.", minimum=1)
    max_run_history: int = _opt(10000, "Finished runs kept; older ones and their events are pruned.", minimum=1)
    max_body_bytes: int = _opt(1048576, "Largest request body accepted.", minimum=1024)
    max_line_bytes: int = _opt(65536, "Longest output line stored; longer lines are cut with a marker.", minimum=256)
    max_output_bytes: int = _opt(67108864, "Output stored per run; the rest is counted, not stored.", minimum=1024)
    max_run_outputs_bytes: int = _opt(1048576, "A run's outputs ($FLWD_OUTPUT keys and values) at most.", minimum=1024)
    default_timeout: float = _opt(3600.0, "Timeout of a job that sets none, in seconds.", minimum=1)
    max_queued_runs: int = _opt(100000, "Queued runs accepted before POST /runs answers 503.", minimum=1)
    max_artifact_bytes: int = _opt(
        104857600, "Bytes of artifacts kept per run; files past it are refused (an event each).", minimum=0
    )
    max_artifact_files: int = _opt(1000, "Artifact files kept per run; files past it are refused.", minimum=0)


@dataclass(frozen=True)
class SSESettings:
    heartbeat: float = _opt(15.0, "Seconds between heartbeat comments on an idle stream.", minimum=0.05)
    max_duration: float = _opt(
        3600.0, "Seconds before a stream is closed (the client resumes with Last-Event-ID).", minimum=1
    )
    max_streams: int = _opt(
        0,
        "Open streams per worker process; 0 means 1,000 under flwd :serve (a stream holds no thread there), threads - 4 under other WSGI hosts.",
        minimum=0,
    )
    poll_interval: float = _opt(0.02, "Seconds between checks for events written by other processes.", minimum=0.001)
    retry_ms: int = _opt(2000, "Reconnect delay suggested to clients.", minimum=0)
    broadcast: bool = _opt(
        True, "Serve event streams from one sending thread per worker (under gunicorn) instead of one thread each."
    )
    crowd_pause: float = _opt(
        0.05,
        "Longest pause after a write when a worker serves ~1,000 streams, so several events go in one write (0: never).",
        minimum=0,
    )
    ticket_ttl: float = _opt(
        300.0,
        "Seconds a stream ticket (for browser EventSource) opens its stream, as often as asked (reconnects).",
        minimum=1,
        maximum=86400,
    )


@dataclass(frozen=True)
class PolicySettings:
    allowed_downgrades: tuple[str, ...] = _opt(
        ("permissive",), "Profiles a token with runs:downgrade may ask for below the default."
    )
    cpu_seconds: int = _opt(3600, "CPU-time limit of host steps under secure.", minimum=1)
    open_files: int = _opt(1024, "Open-file limit of host steps under secure.", minimum=16)
    file_size_bytes: int = _opt(1073741824, "Largest file a host step may write under secure.", minimum=1024)
    max_processes: int = _opt(
        512, "Tasks (processes and threads) a run may hold at once, under secure and permissive.", minimum=8
    )
    memory_bytes: int = _opt(
        2147483648, "Memory a run's host processes may use, under secure and permissive.", minimum=16777216
    )
    cgroups: bool = _opt(
        True, "Contain and cap runs with cgroups where this host allows (false: a subreaper, and no caps)."
    )
    host_env_passthrough: tuple[str, ...] = _opt(
        (), "Host variables passed to jobs that require host-env (permissive only)."
    )
    approval_timeout: float = _opt(86400.0, "Seconds a run may await approval before it ends rejected.", minimum=1)


@dataclass(frozen=True)
class GitSettings:
    allowed_schemes: tuple[str, ...] = _opt(("file", "https", "ssh", "git"), "URL schemes git sources may use.")
    timeout: float = _opt(120.0, "Seconds a clone or fetch may take.", minimum=1)


@dataclass(frozen=True)
class HTTPSettings:
    header_timeout: float = _opt(
        10.0,
        "Seconds a client has to send a request's head; a slow one waits without a thread, then is dropped.",
        minimum=1,
    )
    trusted_proxies: int = _opt(
        0,
        "Proxies in front of flwd whose X-Forwarded-For, -Proto, -Host and -Prefix are believed (0: ignored).",
        minimum=0,
        maximum=5,
    )


@dataclass(frozen=True)
class ArtifactSettings:
    dir: str | None = _opt(
        None,
        "Where artifact files are stored, by digest (default: DATA_DIR/artifacts); several nodes share one mount.",
        path="directory",
    )


@dataclass(frozen=True)
class CallbackSettings:
    allowed_urls: tuple[str, ...] = _opt((), "URL prefixes run callbacks may POST to (none: no callbacks).")
    secret_file: str | None = _opt(None, "Key of the callbacks' HMAC-SHA256 signature (the file's text).", path="file")
    max_attempts: int = _opt(8, "Attempts to deliver a callback before it is given up.", minimum=1, maximum=100)
    request_timeout: float = _opt(10.0, "Seconds an attempt may wait to connect, then per read.", minimum=0.05)
    backoff: float = _opt(5.0, "Seconds before a callback's first retry, doubled at each (jittered).", minimum=0.01)


@dataclass(frozen=True)
class Settings:
    bind: str = _opt("127.0.0.1:8080", "Listen address HOST:PORT ([::1]:PORT for IPv6).", flag="--bind")
    default_profile: str = _opt("secure", "Security profile of runs that ask for none.", PROFILES, flag="--profile")
    data_dir: str | None = _opt(
        None,
        "Where the database, clones and work dirs live (default: ~/.local/share/flwd).",
        flag="--data-dir",
        path="directory",
    )
    db_path: str | None = _opt(None, "SQLite database file (default: DATA_DIR/flwd.db).", flag="--db-path", path="file")
    db_url: str | None = _opt(
        None,
        "PostgreSQL database (postgresql://USER@HOST/DB) shared by several flwd nodes, instead of SQLite; see docs/multinode.rst.",
        flag="--db-url",
    )
    db_pool_size: int = _opt(
        8,
        "PostgreSQL connections per process for reads and claims (the writer and the event listener have their own).",
        minimum=1,
    )
    liveness_timeout: float = _opt(
        15.0,
        "Seconds without a heartbeat after which a process on another host counts as dead and its runs end lost.",
        minimum=5,
    )
    dev: bool = _opt(
        False, "Development mode: accept `dev-token`, CORS for http://localhost (local experiments only).", flag="--dev"
    )
    dev_allowed_hosts: tuple[str, ...] = _opt(
        (),
        "Host names a --dev server answers besides localhost, 127.0.0.0/8 and [::1] (NAME for any port, NAME:PORT for one); any other Host gets 421, against DNS rebinding.",
    )
    workers: int = _opt(2, "gunicorn worker processes.", minimum=1, maximum=64, flag="--workers")
    threads: int = _opt(
        32,
        "Request threads per worker; under uWSGI or mod_wsgi the host's own count is used instead (and each open SSE stream holds one there).",
        minimum=2,
        maximum=10000,
        flag="--threads",
    )
    shutdown_grace: float = _opt(
        20.0, "Seconds running jobs get to finish on SIGTERM before they are cancelled.", minimum=0
    )
    log_level: str = _opt("info", "Log level.", ("debug", "info", "warning", "error"))
    bundled_jobs: bool = _opt(True, "Serve the bundled example source `examples`.")
    db_synchronous: str = _opt(
        "normal", "SQLite synchronous mode: normal survives process crashes, full also power loss.", ("normal", "full")
    )
    auth: AuthSettings = field(default_factory=AuthSettings, metadata={"help": "Bearer token verification."})
    container: ContainerSettings = field(
        default_factory=ContainerSettings, metadata={"help": "Container steps and OCI add-ons."}
    )
    limits: LimitsSettings = field(
        default_factory=LimitsSettings, metadata={"help": "Concurrency, history and size limits."}
    )
    sse: SSESettings = field(default_factory=SSESettings, metadata={"help": "Server-Sent Events streams."})
    policy: PolicySettings = field(default_factory=PolicySettings, metadata={"help": "Security profile details."})
    git: GitSettings = field(default_factory=GitSettings, metadata={"help": "Git sources."})
    http: HTTPSettings = field(default_factory=HTTPSettings, metadata={"help": "HTTP connections."})
    artifacts: ArtifactSettings = field(default_factory=ArtifactSettings, metadata={"help": "Run artifacts."})
    callbacks: CallbackSettings = field(default_factory=CallbackSettings, metadata={"help": "Run callbacks."})
    sources: tuple[dict[str, Any], ...] = field(
        default=(), metadata={"help": "Sources registered at start (same objects as POST /sources)."}
    )

    @property
    def resolved_data_dir(self) -> Path:
        if self.data_dir:
            return Path(self.data_dir).expanduser()
        return default_data_dir()

    @property
    def resolved_db_path(self) -> Path:
        if self.db_path:
            return Path(self.db_path).expanduser()
        return self.resolved_data_dir / "flwd.db"

    @property
    def resolved_artifacts_dir(self) -> Path:
        return Path(self.artifacts.dir).expanduser() if self.artifacts.dir else self.resolved_data_dir / "artifacts"

    @property
    def database_label(self) -> str:
        """The database as the logs name it (a PostgreSQL URL without its password)."""
        if self.db_url:
            return redact_url(self.db_url)
        return str(self.resolved_db_path)

    @property
    def sse_max_streams(self) -> int:
        """Open streams per worker process where each holds a request thread (``with_parked_streams`` otherwise)."""
        return self.sse.max_streams or max(1, self.threads - 4)

    def with_parked_streams(self) -> Settings:
        """For ``flwd :serve``, where an open stream holds no thread: the default cap is ``PARKED_STREAMS``."""
        if self.sse.max_streams or not self.sse.broadcast:
            return self
        return self.replace(sse=dataclasses.replace(self.sse, max_streams=PARKED_STREAMS))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def default_data_dir() -> Path:
    env = os.environ.get("FLWD_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "flwd"


# A Host header (RFC 9110 section 7.2): a name or IPv4 address, or an IPv6 address in brackets, and an optional port.
HOST_RE = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[0-9]{1,5}))?")
_BIND_RE = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9_.-]*)):(?P<port>\d{1,5})")


def parse_bind(bind: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` / ``[V6]:PORT``; raises ConfigError naming ``bind``."""
    match = _BIND_RE.fullmatch(bind or "")
    if not match or not 0 <= int(match.group("port")) <= 65535:
        raise ConfigError("bind", f"expected HOST:PORT or [IPV6]:PORT, got {bind!r}")
    host = match.group("v6") or match.group("host") or "0.0.0.0"
    return host, int(match.group("port"))


def is_loopback_bind(bind: str) -> bool:
    host, _ = parse_bind(bind)
    return host in ("localhost", "::1") or host.startswith("127.")


def _coerce(key: str, hint: Any, value: Any, meta: dict[str, Any]) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):  # a comma-separated string only from FLWD_* (_env_overrides)
            raise ConfigError(key, "expected a list")
        if args[0] is str:
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise ConfigError(f"{key}[{i}]", "expected a string")
            return tuple(value)
        return tuple(validate_source_spec(item, f"{key}[{i}]") for i, item in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(key, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
    minimum = meta.get("minimum")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {value!r}")
    maximum = meta.get("maximum")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"must be at most {maximum}, got {value!r}")
    return value


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(prefix or "(top level)", "expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(key, f"unknown setting (known here: {known})")
        values[name] = _coerce(key, hints[name], value, dict(fields[name].metadata))
    return cls(**values)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, "cannot set below a non-mapping value")
        node = child
    node[parts[-1]] = value


def _env_overrides(environ: typing.Mapping[str, str]) -> dict[str, Any]:
    """``FLWD_LIMITS__MAX_CONCURRENT_RUNS=8`` -> ``{"limits.max_concurrent_runs": 8}``.

    Only names that map onto a setting are read, so ``FLWD_TOKEN`` and
    ``FLWD_SERVER`` (CLI variables) pass untouched.
    """
    known = set(known_keys())
    lists = {d.key for d in declarations() if typing.get_origin(d.hint) is tuple and typing.get_args(d.hint)[0] is str}
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith("FLWD_"):
            continue
        dotted = name[5:].lower().replace("__", ".")
        if dotted in known:
            try:
                value = load_yaml(raw) if raw != "" else None
            except yaml.YAMLError as exc:
                raise ConfigError(dotted, f"environment variable {name} is not a valid value: {exc}") from None
            if dotted in lists and isinstance(value, str):  # a=b,c: a list, where a file must write one
                value = [v.strip() for v in value.split(",") if v.strip()]
            out[dotted] = value
    return out


def known_keys(cls: type = Settings, prefix: str = "") -> typing.Iterator[str]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            yield from known_keys(hints[f.name], key + ".")
        else:
            yield key


@dataclass(frozen=True)
class Declaration:
    """One setting as declared: the reference file, the docs and the ``:serve`` flags are made from these."""

    key: str
    hint: Any  # the value's type, without ``| None``
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    flag: str | None = None
    path: str | None = None


def declarations(cls: type = Settings, prefix: str = "") -> typing.Iterator[Declaration]:
    """Every setting, sections flattened to dotted keys, in declaration order."""
    hints = typing.get_type_hints(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        key, hint = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from declarations(hint, key + ".")
            continue
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        yield Declaration(key, hint, getattr(instance, f.name), **{"help": "", **f.metadata})


def load_settings(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> Settings:
    """Build validated settings from defaults, a YAML file, the environment and flags."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
        try:
            loaded = load_yaml(text)
        except DuplicateKeyError as exc:
            raise ConfigError(
                exc.key, f"{path} line {exc.line}: duplicate key (first on line {exc.first_line}); give each once"
            ) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError("", f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("", f"{path}: expected a mapping of settings at the top level")
        tree = loaded or {}
    layered = {**_env_overrides(os.environ if environ is None else environ), **(overrides or {})}
    for dotted, value in layered.items():
        _set_dotted(tree, dotted, value)
    settings = _build(Settings, tree)
    parse_bind(settings.bind)
    names = [s["name"] for s in settings.sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError("sources", f"duplicate source names: {', '.join(dupes)}")
    if settings.db_url is not None:
        if not settings.db_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError("db_url", "expected a PostgreSQL URL such as postgresql://flwd@db.example/flwd")
        if settings.db_path is not None:
            raise ConfigError("db_url", "set db_url (PostgreSQL) or db_path (SQLite), not both")
    for i, host in enumerate(settings.dev_allowed_hosts):
        if not HOST_RE.fullmatch(host):
            raise ConfigError(
                f"dev_allowed_hosts[{i}]", f"expected NAME or NAME:PORT (devbox.example:8080), got {host!r}"
            )
    settings = settings.replace(dev_allowed_hosts=tuple(host.lower() for host in settings.dev_allowed_hosts))
    for profile in settings.policy.allowed_downgrades:
        if profile not in PROFILES:
            raise ConfigError("policy.allowed_downgrades", f"unknown profile {profile!r}")
    return settings
