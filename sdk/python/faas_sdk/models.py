"""Typed results. Each is a dataclass built from the server's JSON with ``from_dict``, which
ignores fields this version of the SDK does not know (newer servers add fields); the whole
answer is kept in ``raw``."""

import base64
import json
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

T = TypeVar("T")

Network = Union[str, Dict[str, Any]]
"""What a sandbox may reach: ``"none"`` (loopback only, the default), ``"internet"``, or egress
rules ``{"egress": "allow" | "deny", "allow": [...], "deny": [...]}`` whose entries are IPv4
addresses, CIDRs or domain names (``example.com``, ``*.example.com``)."""


def _build(cls: Type[T], data: Dict[str, Any]) -> T:
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: v for k, v in data.items() if k in known and k != "raw"}
    obj = cls(**kwargs)  # type: ignore[call-arg]
    object.__setattr__(obj, "raw", data)
    return obj


class _Model:
    @classmethod
    def from_dict(cls: Type[T], data: Dict[str, Any]) -> T:
        return _build(cls, data)


@dataclass
class ExecutionResult(_Model):
    """What a command did. A command that timed out is a result with ``timed_out`` set, not an
    exception; ``exit_code`` is the real one."""

    request_id: str
    exit_code: int
    stdout: str = ""
    stderr: str = ""
    output: str = ""
    logs: str = ""
    duration_ms: float = 0.0
    total_ms: float = 0.0
    error: Optional[str] = None
    timed_out: bool = False
    signal: Optional[int] = None
    oom_killed: bool = False
    truncated: bool = False
    backend: str = ""
    mode: str = ""
    warm: bool = False
    sandbox_id: str = ""
    snapshot_id: Optional[str] = None
    instance_id: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def success(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.error is None


@dataclass
class Instance(_Model):
    id: str
    status: str
    backend: str = ""
    image: str = ""
    name: Optional[str] = None
    status_reason: Optional[str] = None
    isolation: str = "container"
    memory_mb: int = 0
    cpu_cores: float = 0.0
    idle_timeout_s: Optional[int] = None
    source_snapshot: Optional[str] = None
    created_at_ms: int = 0
    last_used_at_ms: int = 0
    metadata: Dict[str, str] = field(default_factory=dict)
    network: Network = "none"
    public_ports: bool = False
    # Set when public_ports: whoever has it reaches the instance's ports without a key (kept
    # out of the repr, as it opens them).
    ports_token: Optional[str] = field(default=None, repr=False)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class PortInfo(_Model):
    """A TCP port something listens on in a running instance (``list_ports``): the address it
    is bound to, where the port proxy serves it (``path``, under the server's URL) and, on a
    server with a sandbox domain, its own host name (``{port}-{id}.{domain}``)."""

    port: int
    address: str = ""
    path: str = ""
    host: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class PortResponse:
    """What the server on an instance's port answered (``port_request``), whatever its
    status: ``status``, ``headers`` (names in lowercase) and the ``body`` bytes."""

    status: int
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Snapshot(_Model):
    id: str
    kind: str
    backend: str = ""
    image: str = ""
    name: Optional[str] = None
    instance_id: Optional[str] = None
    parent_id: Optional[str] = None
    size_bytes: int = 0
    tags: List[str] = field(default_factory=list)
    created_at_ms: int = 0
    took_ms: Optional[float] = None
    checkpoint_ms: Optional[float] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Branch(_Model):
    """New instances made from a snapshot (or a fork of an instance)."""

    snapshot_id: str
    instances: List[Instance] = field(default_factory=list)
    took_ms: float = 0.0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Branch":
        b = _build(cls, data)
        b.instances = [Instance.from_dict(i) for i in data.get("instances", [])]
        return b


@dataclass
class PoolInfo(_Model):
    image: str
    backend: str
    ready: int = 0
    creating: int = 0
    target: int = 0
    memory_mb: int = 0
    cpu_cores: float = 0.0
    isolation: str = "container"
    last_error: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Health(_Model):
    status: str
    version: str = ""
    uptime_s: float = 0.0
    default_backend: Optional[str] = None
    default_image: str = ""
    backends: List[Dict[str, Any]] = field(default_factory=list)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def healthy(self) -> bool:
        return self.status == "ok"


@dataclass
class Function(_Model):
    name: str
    version: int
    runtime: str
    handler: Optional[str] = None
    image: str = ""
    command: Optional[List[str]] = None
    env_vars: Dict[str, str] = field(default_factory=dict)
    memory_mb: int = 0
    cpu_cores: float = 0.0
    timeout_ms: int = 0
    min_warm: int = 0
    max_concurrency: int = 0
    backend: str = "auto"
    network: Network = "none"
    code_sha256: str = ""
    code_size: int = 0
    versions: List[int] = field(default_factory=list)
    warm: int = 0
    created_ms: int = 0
    updated_ms: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Invocation(_Model):
    """A function invocation: sync ones come back finished; async ones start ``queued``."""

    invocation_id: str
    function: str = ""
    version: int = 0
    status: str = "queued"
    result: Any = None
    error: Optional[Dict[str, Any]] = None
    logs: str = ""
    duration_ms: Optional[float] = None
    cold: Optional[bool] = None
    attempts: int = 0
    max_attempts: int = 0
    attempt_errors: List[Dict[str, Any]] = field(default_factory=list)
    created_ms: int = 0
    started_ms: Optional[int] = None
    finished_ms: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_async(self) -> bool:
        return bool(self.raw.get("async"))

    @property
    def done(self) -> bool:
        return self.status not in ("queued", "running")


@dataclass
class LogEvent:
    """One Server-Sent Event of an output stream: ``stdout``, ``stderr`` or ``exit``."""

    event: str
    data: Dict[str, Any]

    @property
    def text(self) -> str:
        return str(self.data.get("data", ""))


@dataclass
class ProcessStarted(_Model):
    """A process started in an instance: it runs in the background, follow it by ``pid``."""

    pid: int
    tag: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ProcessInfo(_Model):
    """One process of an instance, running or recently ended (``exit_code`` is 128 + N when
    signal N ended it)."""

    pid: int
    command: List[str] = field(default_factory=list)
    tag: Optional[str] = None
    env_vars: Dict[str, str] = field(default_factory=dict)
    working_dir: Optional[str] = None
    pty: bool = False
    running: bool = False
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    started_at_ms: int = 0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ProcessExit(_Model):
    """How a process ended (the last event of its stream)."""

    exit_code: int
    signal: Optional[int] = None
    timed_out: bool = False
    oom_killed: bool = False
    duration_ms: float = 0.0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class ProcessEvent:
    """One event of a process's stream: ``stdout``, ``stderr`` or ``pty`` output (``data``, the
    bytes), then one ``exit`` (``exit`` set, ``data`` empty)."""

    kind: str
    data: bytes = b""
    exit: Optional[ProcessExit] = None

    @classmethod
    def from_sse(cls, event: str, data: Dict[str, Any]) -> "ProcessEvent":
        if event == "exit":
            return cls(event, b"", ProcessExit.from_dict(data))
        return cls(event, base64.b64decode(data.get("data", "")))

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


@dataclass
class FileEntry(_Model):
    """A file as the instance sees it (a symlink is described, not followed)."""

    name: str
    path: str
    type: str  # file, dir, symlink or other
    size: int = 0
    mode: int = 0
    permissions: str = ""
    owner: str = ""
    group: str = ""
    uid: int = 0
    gid: int = 0
    mtime_ms: int = 0
    symlink_target: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


@dataclass
class FsEvent(_Model):
    """A change under a watched directory: ``op`` is create, write, remove, rename or chmod (a
    rename is the old path's ``rename`` then the new path's ``create``)."""

    op: str
    path: str
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


# ---- tenants, API keys, usage and the audit trail ----


@dataclass
class Whoami(_Model):
    """Who the client's API key is: its tenant and role (``admin`` or ``member``)."""

    tenant: str
    role: str
    key_id: Optional[str] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


QUOTA_FIELDS = (
    "concurrent_sandboxes",
    "instances",
    "memory_mb",
    "snapshot_bytes",
    "functions",
    "queued_invocations",
    "requests_per_second",
    "burst",
    "private_egress",
)


@dataclass
class Quotas(_Model):
    """A tenant's limits. In its settings (``Tenant.quotas``) ``None`` is the server's default;
    in ``Tenant.effective`` every field is set, and 0 means no limit."""

    concurrent_sandboxes: Optional[int] = None
    instances: Optional[int] = None
    memory_mb: Optional[int] = None
    snapshot_bytes: Optional[int] = None
    functions: Optional[int] = None
    queued_invocations: Optional[int] = None
    requests_per_second: Optional[int] = None
    burst: Optional[int] = None
    #: Its networked sandboxes may reach the private ranges (10/8, 172.16/12, 192.168/16,
    #: 100.64/10).
    private_egress: Optional[bool] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    def to_dict(self) -> Dict[str, int]:
        """The fields that are set, as the API takes them."""
        return {k: getattr(self, k) for k in QUOTA_FIELDS if getattr(self, k) is not None}


@dataclass
class Tenant(_Model):
    """A tenant: its own quota settings and the limits as enforced (``effective``)."""

    id: str
    name: Optional[str] = None
    created_at_ms: int = 0
    quotas: Quotas = field(default_factory=Quotas)
    effective: Quotas = field(default_factory=Quotas)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Tenant":
        t = _build(cls, data)
        t.quotas = Quotas.from_dict(data.get("quotas") or {})
        t.effective = Quotas.from_dict(data.get("effective") or {})
        return t


@dataclass
class ApiKey(_Model):
    """An API key. ``secret`` (``faas_...``) is only set in the answer of ``create_key``: keep
    it then, the server cannot show it again. It is left out of the repr."""

    id: str
    name: str = ""
    tenant: str = ""
    role: str = "member"
    prefix: str = ""
    created_at_ms: int = 0
    expires_at_ms: Optional[int] = None
    revoked_at_ms: Optional[int] = None
    last_used_at_ms: Optional[int] = None
    secret: Optional[str] = field(default=None, repr=False)
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class UsageRow(_Model):
    """What a tenant used over a period, for one day, function or instance (``key``), or in
    all (``key == "total"``)."""

    key: str
    executions: int = 0
    instance_execs: int = 0
    invocations: int = 0
    instance_seconds: float = 0.0
    wall_ms: float = 0.0
    cpu_ms: float = 0.0
    memory_mib_s: float = 0.0
    peak_memory_mb: float = 0.0
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Usage(_Model):
    """A usage report of ``get_usage``: one row per ``group_by`` key, and their total."""

    tenant: str
    from_ms: int = 0
    to_ms: int = 0
    group_by: str = ""
    rows: List[UsageRow] = field(default_factory=list)
    total: UsageRow = field(default_factory=lambda: UsageRow("total"))
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Usage":
        u = _build(cls, data)
        u.rows = [UsageRow.from_dict(r) for r in data.get("rows", [])]
        u.total = UsageRow.from_dict(data.get("total") or {"key": "total"})
        return u


@dataclass
class AuditEvent(_Model):
    """One administrative act: ``action`` (``key.create``, ``key.revoke``, ``tenant.create``,
    ``tenant.update``...) by ``actor_key_id`` of ``actor_tenant`` on ``target``."""

    id: int
    at_ms: int = 0
    actor_tenant: str = ""
    actor_key_id: Optional[str] = None
    action: str = ""
    target: str = ""
    detail: Any = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
