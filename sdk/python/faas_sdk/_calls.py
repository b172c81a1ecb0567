"""Every API call, described once: what to send and how to read the answer.

``FaaSClient`` (sync) and ``AsyncFaaSClient`` (async) differ only in how they send; their
public methods are made from the functions here (see ``client.py``), so both have the same
names, arguments and documentation.
"""

import base64
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .models import (
    ApiKey,
    AuditEvent,
    Branch,
    ExecutionResult,
    FileEntry,
    Function,
    Health,
    Instance,
    Invocation,
    Network,
    PoolInfo,
    PortInfo,
    PortResponse,
    ProcessInfo,
    ProcessStarted,
    Quotas,
    Snapshot,
    Tenant,
    Usage,
    Whoami,
)

PYTHON_IMAGE = "faas/bookworm-python3.11-node18:latest"
"""The image of the runtime helpers (python3 and node) when none is named."""

Command = Union[str, Sequence[str]]
PtySize = Union[Tuple[int, int], Dict[str, int]]


@dataclass
class Call:
    method: str
    path: str
    json: Any = None
    content: Optional[bytes] = None
    params: Dict[str, Any] = field(default_factory=dict)
    headers: Dict[str, str] = field(default_factory=dict)
    parse: Callable[[Any], Any] = lambda body: body
    # Whether sending it twice is harmless (then transport failures are retried).
    idempotent: bool = False
    raw: bool = False  # the answer is bytes, not JSON
    # The answer is a port's server's, whatever its status: parse gets a PortResponse, and
    # only the API's own errors (the port proxy's) raise.
    passthrough: bool = False


def _drop_none(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _command(command: Command) -> Union[str, List[str]]:
    return command if isinstance(command, str) else list(command)


def _env(env_vars: Optional[Dict[str, Any]]) -> Optional[Dict[str, str]]:
    return None if env_vars is None else {str(k): str(v) for k, v in env_vars.items()}


# ---- execute ----


def execute(
    self,
    command: Command,
    image: Optional[str] = None,
    env_vars: Optional[Dict[str, Any]] = None,
    timeout_ms: Optional[int] = None,
    mode: Optional[str] = None,
    runtime: Optional[str] = None,
    working_dir: Optional[str] = None,
    memory_mb: Optional[int] = None,
    cpu_cores: Optional[float] = None,
    stdin: Optional[Union[str, bytes]] = None,
    snapshot_id: Optional[str] = None,
    branch_from: Optional[str] = None,
    instance_id: Optional[str] = None,
    request_id: Optional[str] = None,
    isolation: Optional[str] = None,
    network: Optional[Network] = None,
) -> ExecutionResult:
    """Runs ``command`` (a string run by ``sh -c``, or an argv list) in a sandbox and returns
    its exact result. ``mode`` is one of ephemeral (default), cached, checkpointed, branched,
    persistent. ``network``: what the sandbox may reach, ``"none"`` (the default),
    ``"internet"`` or egress rules (``{"egress": "deny", "allow": ["example.com"]}``); a
    server without sandbox networking answers ``UnsupportedError`` to anything but none.
    A command that exits non-zero or times out is a result, not an exception.
    Never retried: running a command twice is not harmless."""
    body = _drop_none(
        {
            "command": _command(command),
            "image": image,
            "env_vars": _env(env_vars),
            "timeout_ms": timeout_ms,
            "mode": mode,
            "runtime": runtime,
            "working_dir": working_dir,
            "memory_mb": memory_mb,
            "cpu_cores": cpu_cores,
            "snapshot_id": snapshot_id,
            "branch_from": branch_from,
            "instance_id": instance_id,
            "request_id": request_id,
            "isolation": isolation,
            "network": network,
        }
    )
    if isinstance(stdin, bytes):
        body["stdin_b64"] = base64.b64encode(stdin).decode()
    elif stdin is not None:
        body["stdin"] = stdin
    return Call("POST", "/api/v1/execute", json=body, parse=ExecutionResult.from_dict)


def run_python(self, code: str, image: str = PYTHON_IMAGE, **kwargs: Any) -> ExecutionResult:
    """Runs Python source with ``python3 -c``."""
    return execute(self, ["python3", "-c", code], image=image, **kwargs)


def run_javascript(
    self, code: str, image: str = PYTHON_IMAGE, **kwargs: Any
) -> ExecutionResult:
    """Runs JavaScript source with ``node -e``."""
    return execute(self, ["node", "-e", code], image=image, **kwargs)


def run_bash(self, script: str, **kwargs: Any) -> ExecutionResult:
    """Runs a shell script with ``sh -c`` (the default image has no bash)."""
    return execute(self, ["/bin/sh", "-c", script], **kwargs)


def fork_execution(self, branch_from: str, command: Command, **kwargs: Any) -> ExecutionResult:
    """Runs ``command`` in a fresh branch of a snapshot or instance (mode ``branched``); the
    parent is untouched."""
    return execute(self, command, mode="branched", branch_from=branch_from, **kwargs)


def prewarm(
    self,
    image: Optional[str] = None,
    count: int = 1,
    runtime: Optional[str] = None,
    isolation: Optional[str] = None,
) -> PoolInfo:
    """Sets the warm pool of ``image`` to ``count`` started sandboxes (``cached`` mode uses
    them)."""
    body = _drop_none({"image": image, "count": count, "runtime": runtime, "isolation": isolation})
    return Call("POST", "/api/v1/prewarm", json=body, parse=PoolInfo.from_dict, idempotent=True)


def list_pools(self) -> List[PoolInfo]:
    return Call(
        "GET",
        "/api/v1/pools",
        parse=lambda b: [PoolInfo.from_dict(p) for p in b["pools"]],
        idempotent=True,
    )


def list_images(self) -> List[Dict[str, Any]]:
    """Images of the native backend's store."""
    return Call("GET", "/api/v1/images", parse=lambda b: b["images"], idempotent=True)


def health_check(self) -> Health:
    return Call("GET", "/health", parse=Health.from_dict, idempotent=True)


def get_metrics(self) -> Dict[str, Any]:
    """Counters since the server started (JSON)."""
    return Call("GET", "/api/v1/metrics", idempotent=True)


def get_prometheus_metrics(self) -> str:
    """The same counters in the Prometheus text format."""
    return Call("GET", "/metrics", raw=True, parse=lambda b: b.decode(), idempotent=True)


def get_openapi(self) -> Dict[str, Any]:
    """The server's OpenAPI 3 document."""
    return Call("GET", "/api/v1/openapi.json", idempotent=True)


# ---- instances ----


def create_instance(
    self,
    image: Optional[str] = None,
    name: Optional[str] = None,
    env_vars: Optional[Dict[str, Any]] = None,
    memory_mb: Optional[int] = None,
    cpu_cores: Optional[float] = None,
    idle_timeout_s: Optional[int] = None,
    runtime: Optional[str] = None,
    isolation: Optional[str] = None,
    metadata: Optional[Dict[str, str]] = None,
    network: Optional[Network] = None,
    public_ports: Optional[bool] = None,
) -> Instance:
    """Starts a long-lived sandbox that keeps its files between execs. ``metadata``: string
    keys and values of the caller's (at most 4 KiB in all), kept with it and usable as a
    filter of ``list_instances``. ``network``: what it may reach (as ``execute``'s).
    ``public_ports=True``: its ports (``port_url``) also answer, without an API key, to
    requests carrying its ``ports_token`` (the answer's; a ``faas_token`` query parameter or
    an ``X-Faas-Ports-Token`` header)."""
    body = _drop_none(
        {
            "image": image,
            "name": name,
            "env_vars": _env(env_vars),
            "memory_mb": memory_mb,
            "cpu_cores": cpu_cores,
            "idle_timeout_s": idle_timeout_s,
            "runtime": runtime,
            "isolation": isolation,
            "metadata": _env(metadata),
            "network": network,
            "public_ports": public_ports,
        }
    )
    return Call("POST", "/api/v1/instances", json=body, parse=Instance.from_dict)


def list_instances(self, metadata: Optional[Dict[str, str]] = None) -> List[Instance]:
    """Instances; with ``metadata``, only those whose metadata has all of its keys with these
    values."""
    params = {f"metadata.{k}": str(v) for k, v in (metadata or {}).items()}
    return Call(
        "GET",
        "/api/v1/instances",
        params=params,
        parse=lambda b: [Instance.from_dict(i) for i in b["instances"]],
        idempotent=True,
    )


def get_instance(self, instance_id: str) -> Instance:
    return Call("GET", f"/api/v1/instances/{instance_id}", parse=Instance.from_dict, idempotent=True)


def exec_instance(
    self,
    instance_id: str,
    command: Command,
    stdin: Optional[str] = None,
    env_vars: Optional[Dict[str, Any]] = None,
    working_dir: Optional[str] = None,
    timeout_ms: Optional[int] = None,
) -> ExecutionResult:
    """Runs a command in an instance (its files persist between calls)."""
    body = _drop_none(
        {
            "command": _command(command),
            "stdin": stdin,
            "env_vars": _env(env_vars),
            "working_dir": working_dir,
            "timeout_ms": timeout_ms,
        }
    )
    return Call(
        "POST", f"/api/v1/instances/{instance_id}/exec", json=body, parse=ExecutionResult.from_dict
    )


def stop_instance(self, instance_id: str) -> Instance:
    """Stops an instance; its files are kept."""
    return Call("POST", f"/api/v1/instances/{instance_id}/stop", parse=Instance.from_dict, idempotent=True)


def start_instance(self, instance_id: str) -> Instance:
    return Call("POST", f"/api/v1/instances/{instance_id}/start", parse=Instance.from_dict, idempotent=True)


def delete_instance(self, instance_id: str) -> None:
    return Call("DELETE", f"/api/v1/instances/{instance_id}", parse=lambda b: None, idempotent=True)


def download_file(self, instance_id: str, path: str) -> bytes:
    """A file of an instance, as bytes."""
    return Call(
        "GET",
        f"/api/v1/instances/{instance_id}/files",
        params={"path": path},
        raw=True,
        idempotent=True,
    )


def upload_file(self, instance_id: str, path: str, data: Union[bytes, str]) -> None:
    """Writes ``data`` to ``path`` in an instance (directories are made)."""
    content = data.encode() if isinstance(data, str) else data
    return Call(
        "PUT",
        f"/api/v1/instances/{instance_id}/files",
        params={"path": path},
        content=content,
        parse=lambda b: None,
        idempotent=True,
    )


def fork_instance(self, instance_id: str, count: int = 1) -> Branch:
    """``count`` new instances with the instance's files, each independent."""
    return Call(
        "POST", f"/api/v1/instances/{instance_id}/fork", json={"count": count}, parse=Branch.from_dict
    )


# ---- ports of an instance ----


def _port_path(
    instance_id: str, port: int, path: str = "/", params: Optional[Dict[str, Any]] = None
) -> str:
    """Where the port proxy serves ``path`` of ``port``: ``path`` may carry a query (kept as
    it is), ``params`` are added to it."""
    out = f"/api/v1/instances/{instance_id}/ports/{int(port)}/{path.lstrip('/')}"
    if params:
        out += ("&" if "?" in out else "?") + urllib.parse.urlencode(params)
    return out


def port_url(
    self, instance_id: str, port: int, path: str = "/", token: Optional[str] = None
) -> str:
    """The absolute URL of ``path`` on ``port`` of an instance, through the server's port proxy
    (what ``list_ports`` gives as ``path``, under the client's base URL). It takes the owner's
    API key; with ``token`` (the ``ports_token`` of an instance made with
    ``public_ports=True``) it carries it as ``faas_token``, and then opens without a key (in
    a browser, say). Makes no request."""
    params = None if token is None else {"faas_token": token}
    return self.base_url + _port_path(instance_id, port, path, params)


def list_ports(self, instance_id: str) -> List[PortInfo]:
    """The TCP ports something listens on in a running instance (one entry per port), each
    with where the port proxy serves it."""
    return Call(
        "GET",
        f"/api/v1/instances/{instance_id}/ports",
        parse=lambda b: [PortInfo.from_dict(p) for p in b["ports"]],
        idempotent=True,
    )


def port_request(
    self,
    instance_id: str,
    port: int,
    path: str = "/",
    method: str = "GET",
    body: Optional[Union[bytes, str]] = None,
    headers: Optional[Dict[str, str]] = None,
    params: Optional[Dict[str, Any]] = None,
) -> PortResponse:
    """Sends an HTTP request to ``path`` (it may carry a query; ``params`` are added to it) of
    the server listening on ``port`` in an instance, through the port proxy with the client's
    key, and returns what that server answered, whatever its status (a 404 of its own is a
    ``PortResponse``, not an exception; redirects are not followed). The proxy's own refusals
    raise: ``PortClosedError`` (nothing listens there), ``BadGatewayError`` (no HTTP answer),
    ``NotFoundError`` (no such instance)... Never retried."""
    content = body.encode() if isinstance(body, str) else body
    return Call(
        method.upper(),
        _port_path(instance_id, port, path, params),
        content=content,
        headers=dict(headers or {}),
        passthrough=True,
    )


# ---- processes of an instance ----


def _pty(pty: Optional[PtySize]) -> Optional[Dict[str, int]]:
    if pty is None:
        return None
    if isinstance(pty, dict):
        return {"cols": int(pty["cols"]), "rows": int(pty["rows"])}
    cols, rows = pty
    return {"cols": int(cols), "rows": int(rows)}


def start_process(
    self,
    instance_id: str,
    command: Command,
    *,
    env_vars: Optional[Dict[str, Any]] = None,
    working_dir: Optional[str] = None,
    stdin: bool = False,
    pty: Optional[PtySize] = None,
    tag: Optional[str] = None,
    timeout_ms: Optional[int] = None,
) -> ProcessStarted:
    """Starts ``command`` in an instance and returns at once (it runs in the background):
    follow it with ``process_events``. ``stdin=True`` keeps its stdin open for ``send_stdin``
    (otherwise it reads /dev/null); ``pty=(cols, rows)`` (or ``{"cols", "rows"}``) runs it
    under a terminal, whose output comes as ``pty`` events and which always takes input;
    ``tag`` is a label of yours shown by ``list_processes``; ``timeout_ms`` kills its process
    group after that long. Never retried."""
    body = _drop_none(
        {
            "command": _command(command),
            "env_vars": _env(env_vars),
            "working_dir": working_dir,
            "stdin": stdin or None,
            "pty": _pty(pty),
            "tag": tag,
            "timeout_ms": timeout_ms,
        }
    )
    return Call(
        "POST",
        f"/api/v1/instances/{instance_id}/processes",
        json=body,
        parse=ProcessStarted.from_dict,
    )


def list_processes(self, instance_id: str) -> List[ProcessInfo]:
    """The instance's running and recently ended processes (its running execs too)."""
    return Call(
        "GET",
        f"/api/v1/instances/{instance_id}/processes",
        parse=lambda b: [ProcessInfo.from_dict(p) for p in b["processes"]],
        idempotent=True,
    )


def send_stdin(self, instance_id: str, pid: int, data: Union[bytes, str]) -> None:
    """Writes ``data`` to the stdin of a process started with ``stdin=True`` or a ``pty``
    (otherwise a ``ConflictError``)."""
    content = data.encode() if isinstance(data, str) else data
    return Call(
        "POST",
        f"/api/v1/instances/{instance_id}/processes/{pid}/stdin",
        content=content,
        headers={"content-type": "application/octet-stream"},
        parse=lambda b: None,
    )


def close_stdin(self, instance_id: str, pid: int) -> None:
    """Closes the stdin of a process (it then reads end-of-file)."""
    return Call(
        "POST",
        f"/api/v1/instances/{instance_id}/processes/{pid}/stdin/close",
        parse=lambda b: None,
        idempotent=True,
    )


def signal_process(self, instance_id: str, pid: int, signal: Union[str, int] = "SIGTERM") -> None:
    """Sends ``signal`` (a name such as ``SIGTERM``, ``TERM``, ``kill``, or a number) to the
    process's group."""
    return Call(
        "POST",
        f"/api/v1/instances/{instance_id}/processes/{pid}/signal",
        json={"signal": signal},
        parse=lambda b: None,
    )


def resize_pty(self, instance_id: str, pid: int, cols: int, rows: int) -> None:
    """Resizes the terminal of a process started with a ``pty``."""
    return Call(
        "POST",
        f"/api/v1/instances/{instance_id}/processes/{pid}/resize",
        json={"cols": cols, "rows": rows},
        parse=lambda b: None,
        idempotent=True,
    )


# ---- files of an instance ----


def stat(self, instance_id: str, path: str) -> FileEntry:
    """A file, directory or link (not followed) of an instance, by absolute path."""
    return Call(
        "GET",
        f"/api/v1/instances/{instance_id}/fs/stat",
        params={"path": path},
        parse=FileEntry.from_dict,
        idempotent=True,
    )


def list_dir(self, instance_id: str, path: str, depth: int = 1) -> List[FileEntry]:
    """The entries under directory ``path`` down to ``depth`` levels (1: its children), sorted
    by path."""
    return Call(
        "GET",
        f"/api/v1/instances/{instance_id}/fs/list",
        params={"path": path, "depth": depth},
        parse=lambda b: [FileEntry.from_dict(e) for e in b["entries"]],
        idempotent=True,
    )


def make_dir(self, instance_id: str, path: str) -> FileEntry:
    """Makes directory ``path`` (and its parents); one that exists is a ``ConflictError``."""
    return Call(
        "POST",
        f"/api/v1/instances/{instance_id}/fs/mkdir",
        json={"path": path},
        parse=FileEntry.from_dict,
    )


def move(self, instance_id: str, from_: str, to: str) -> FileEntry:
    """Renames ``from_`` to ``to`` and returns what is now at ``to``."""
    return Call(
        "POST",
        f"/api/v1/instances/{instance_id}/fs/move",
        json={"from": from_, "to": to},
        parse=FileEntry.from_dict,
    )


def remove(self, instance_id: str, path: str) -> None:
    """Removes a file, a link or a whole directory."""
    return Call(
        "DELETE",
        f"/api/v1/instances/{instance_id}/fs",
        params={"path": path},
        parse=lambda b: None,
        idempotent=True,
    )


# ---- snapshots ----


def create_snapshot(
    self,
    instance_id: str,
    name: Optional[str] = None,
    tags: Optional[List[str]] = None,
    memory: bool = False,
) -> Snapshot:
    """Snapshots an instance's files (and, with ``memory``, its processes where the backend
    can: gVisor instances)."""
    body = _drop_none({"instance_id": instance_id, "name": name, "tags": tags, "memory": memory or None})
    return Call("POST", "/api/v1/snapshots", json=body, parse=Snapshot.from_dict)


def list_snapshots(self) -> List[Snapshot]:
    return Call(
        "GET",
        "/api/v1/snapshots",
        parse=lambda b: [Snapshot.from_dict(s) for s in b["snapshots"]],
        idempotent=True,
    )


def get_snapshot(self, snapshot_id: str) -> Snapshot:
    return Call("GET", f"/api/v1/snapshots/{snapshot_id}", parse=Snapshot.from_dict, idempotent=True)


def delete_snapshot(self, snapshot_id: str) -> None:
    return Call("DELETE", f"/api/v1/snapshots/{snapshot_id}", parse=lambda b: None, idempotent=True)


def restore_snapshot(self, snapshot_id: str) -> Instance:
    """A new instance from a snapshot."""
    return Call("POST", f"/api/v1/snapshots/{snapshot_id}/restore", parse=Instance.from_dict)


def branch_snapshot(self, snapshot_id: str, count: int = 1) -> Branch:
    """``count`` new, independent instances from a snapshot."""
    return Call(
        "POST", f"/api/v1/snapshots/{snapshot_id}/branch", json={"count": count}, parse=Branch.from_dict
    )


# ---- functions ----


def _deploy_body(
    runtime: Optional[str],
    handler: Optional[str],
    code: Optional[Union[str, bytes]],
    archive: Optional[bytes],
    extra: Dict[str, Any],
) -> Dict[str, Any]:
    body = _drop_none({"runtime": runtime, "handler": handler, **extra})
    if "env_vars" in body:
        body["env_vars"] = _env(body["env_vars"])
    if code is not None:
        raw = code.encode() if isinstance(code, str) else code
        body["code_b64"] = base64.b64encode(raw).decode()
    if archive is not None:
        body["archive_b64"] = base64.b64encode(archive).decode()
    return body


def deploy_function(
    self,
    name: str,
    runtime: str,
    code: Optional[Union[str, bytes]] = None,
    handler: Optional[str] = None,
    archive: Optional[bytes] = None,
    image: Optional[str] = None,
    command: Optional[Command] = None,
    env_vars: Optional[Dict[str, Any]] = None,
    memory_mb: Optional[int] = None,
    timeout_ms: Optional[int] = None,
    min_warm: Optional[int] = None,
    max_concurrency: Optional[int] = None,
    backend: Optional[str] = None,
    network: Optional[Network] = None,
) -> Function:
    """Deploys a function (``python``, ``node``, ``shell``, ``binary`` or ``image``) from one
    source file (``code``) or a zip / tar.gz ``archive``; a new version when ``name`` exists.
    ``network``: what its sandboxes may reach (as ``execute``'s)."""
    extra = {
        "name": name,
        "image": image,
        "command": None if command is None else _command(command),
        "env_vars": env_vars,
        "memory_mb": memory_mb,
        "timeout_ms": timeout_ms,
        "min_warm": min_warm,
        "max_concurrency": max_concurrency,
        "backend": backend,
        "network": network,
    }
    body = _deploy_body(runtime, handler, code, archive, extra)
    return Call("POST", "/api/v1/functions", json=body, parse=Function.from_dict)


def update_function(
    self,
    name: str,
    code: Optional[Union[str, bytes]] = None,
    handler: Optional[str] = None,
    archive: Optional[bytes] = None,
    **settings: Any,
) -> Function:
    """A new version of ``name``: what is not given is taken from the latest version."""
    body = _deploy_body(settings.pop("runtime", None), handler, code, archive, settings)
    return Call("PUT", f"/api/v1/functions/{name}", json=body, parse=Function.from_dict)


def list_functions(self) -> List[Function]:
    return Call(
        "GET",
        "/api/v1/functions",
        parse=lambda b: [Function.from_dict(f) for f in b["functions"]],
        idempotent=True,
    )


def get_function(self, name: str, version: Optional[int] = None) -> Function:
    return Call(
        "GET",
        f"/api/v1/functions/{name}",
        params=_drop_none({"version": version}),
        parse=Function.from_dict,
        idempotent=True,
    )


def delete_function(self, name: str) -> Dict[str, Any]:
    """Deletes a function with all its versions; its queued invocations fail with
    ``function_deleted``."""
    return Call("DELETE", f"/api/v1/functions/{name}", idempotent=True)


def invoke_function(
    self,
    name: str,
    payload: Any = None,
    async_: bool = False,
    version: Optional[int] = None,
    idempotency_key: Optional[str] = None,
    callback_url: Optional[str] = None,
    max_attempts: Optional[int] = None,
) -> Invocation:
    """Invokes a function with a JSON ``payload``. Sync: the finished invocation (a handler
    error is ``status == "error"``, not an exception). ``async_=True``: queued, status
    ``queued``; follow it with ``get_invocation`` or ``wait_invocation``. Retried on transport
    failures only with an ``idempotency_key``."""
    params = _drop_none(
        {
            "async": "true" if async_ else None,
            "version": version,
            "callback_url": callback_url,
            "max_attempts": max_attempts,
        }
    )
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    return Call(
        "POST",
        f"/api/v1/functions/{name}/invoke",
        content=json.dumps(payload).encode(),
        headers={"content-type": "application/json", **headers},
        params=params,
        parse=Invocation.from_dict,
        idempotent=idempotency_key is not None,
    )


def get_invocation(self, invocation_id: str) -> Invocation:
    return Call("GET", f"/api/v1/invocations/{invocation_id}", parse=Invocation.from_dict, idempotent=True)


def list_invocations(
    self, function: Optional[str] = None, status: Optional[str] = None, limit: int = 100
) -> List[Invocation]:
    """Invocations, newest first (``status``: queued, running, succeeded, error, timeout,
    dead_letter)."""
    return Call(
        "GET",
        "/api/v1/invocations",
        params=_drop_none({"function": function, "status": status, "limit": limit}),
        parse=lambda b: [Invocation.from_dict(i) for i in b["invocations"]],
        idempotent=True,
    )


# ---- tenants, API keys, usage and the audit trail ----

QuotasLike = Union[Quotas, Dict[str, Optional[int]]]


def _quotas(quotas: Optional[QuotasLike]) -> Dict[str, int]:
    if quotas is None:
        return {}
    if isinstance(quotas, Quotas):
        return quotas.to_dict()
    return _drop_none(dict(quotas))


def whoami(self) -> Whoami:
    """The tenant and role (``admin`` or ``member``) of the client's API key."""
    return Call("GET", "/api/v1/auth/whoami", parse=Whoami.from_dict, idempotent=True)


def create_tenant(
    self,
    tenant_id: Optional[str] = None,
    name: Optional[str] = None,
    quotas: Optional[QuotasLike] = None,
) -> Tenant:
    """Makes a tenant (``tenant_id``: lowercase letters, digits, ``-`` and ``_``; generated
    when not given). ``quotas`` (a ``Quotas`` or a dict of its fields) are its own limits; the
    ones not given are the server's defaults. Admin only."""
    body = _drop_none({"id": tenant_id, "name": name, "quotas": _quotas(quotas) or None})
    return Call("POST", "/api/v1/tenants", json=body, parse=Tenant.from_dict)


def list_tenants(self) -> List[Tenant]:
    """Admin only."""
    return Call(
        "GET",
        "/api/v1/tenants",
        parse=lambda b: [Tenant.from_dict(t) for t in b["tenants"]],
        idempotent=True,
    )


def get_tenant(self, tenant_id: str) -> Tenant:
    """Admin only."""
    return Call("GET", f"/api/v1/tenants/{tenant_id}", parse=Tenant.from_dict, idempotent=True)


def set_tenant_quotas(self, tenant_id: str, quotas: QuotasLike) -> Tenant:
    """Replaces the tenant's quota settings with ``quotas``: a field not given goes back to the
    server's default. Admin only."""
    return Call(
        "PUT",
        f"/api/v1/tenants/{tenant_id}",
        json={"quotas": _quotas(quotas)},
        parse=Tenant.from_dict,
        idempotent=True,
    )


def create_key(
    self,
    name: str,
    tenant: Optional[str] = None,
    role: Optional[str] = None,
    expires_in_s: Optional[int] = None,
) -> ApiKey:
    """Makes an API key of ``tenant`` (default: the caller's) with ``role`` ``member``
    (default) or ``admin``, that stops working after ``expires_in_s`` if given. The answer is
    the only one with its ``secret``. Admin only."""
    body = _drop_none(
        {"name": name, "tenant": tenant, "role": role, "expires_in_s": expires_in_s}
    )
    return Call("POST", "/api/v1/keys", json=body, parse=ApiKey.from_dict)


def list_keys(self, tenant: Optional[str] = None) -> List[ApiKey]:
    """API keys, without their secrets; with ``tenant``, only that tenant's. Admin only."""
    return Call(
        "GET",
        "/api/v1/keys",
        params=_drop_none({"tenant": tenant}),
        parse=lambda b: [ApiKey.from_dict(k) for k in b["keys"]],
        idempotent=True,
    )


def revoke_key(self, key_id: str) -> None:
    """Revokes an API key: the next request made with it is refused. Admin only."""
    return Call("DELETE", f"/api/v1/keys/{key_id}", parse=lambda b: None, idempotent=True)


def get_usage(
    self,
    from_ms: Optional[int] = None,
    to_ms: Optional[int] = None,
    group_by: Optional[str] = None,
    tenant: Optional[str] = None,
) -> Usage:
    """What a tenant used between ``from_ms`` and ``to_ms`` (ms since the epoch), one row per
    ``group_by`` key (``day``, ``function`` or ``instance``), and the total. A member key sees
    its own tenant's; an admin names any ``tenant`` (default: its own)."""
    params = _drop_none({"from": from_ms, "to": to_ms, "group_by": group_by, "tenant": tenant})
    return Call("GET", "/api/v1/usage", params=params, parse=Usage.from_dict, idempotent=True)


def list_audit_events(self, limit: Optional[int] = None) -> List[AuditEvent]:
    """The audit trail (at most ``limit`` events): key and tenant changes and who made them.
    Admin only."""
    return Call(
        "GET",
        "/api/v1/audit",
        params=_drop_none({"limit": limit}),
        parse=lambda b: [AuditEvent.from_dict(e) for e in b["events"]],
        idempotent=True,
    )


CALLS = [
    execute,
    run_python,
    run_javascript,
    run_bash,
    fork_execution,
    prewarm,
    list_pools,
    list_images,
    health_check,
    get_metrics,
    get_prometheus_metrics,
    get_openapi,
    create_instance,
    list_instances,
    get_instance,
    exec_instance,
    stop_instance,
    start_instance,
    delete_instance,
    download_file,
    upload_file,
    fork_instance,
    list_ports,
    port_request,
    start_process,
    list_processes,
    send_stdin,
    close_stdin,
    signal_process,
    resize_pty,
    stat,
    list_dir,
    make_dir,
    move,
    remove,
    create_snapshot,
    list_snapshots,
    get_snapshot,
    delete_snapshot,
    restore_snapshot,
    branch_snapshot,
    deploy_function,
    update_function,
    list_functions,
    get_function,
    delete_function,
    invoke_function,
    get_invocation,
    list_invocations,
    whoami,
    create_tenant,
    list_tenants,
    get_tenant,
    set_tenant_quotas,
    create_key,
    list_keys,
    revoke_key,
    get_usage,
    list_audit_events,
]

# Methods that make no request: the same function on both clients.
HELPERS = [port_url]
