//! `faas`: the one binary of the platform.
//!
//! - `faas serve`: the HTTP API with its platform (see [`server`]).
//! - `faas doctor`: which backends work on this host, and what is missing for the others.
//! - `faas run`: run a command through the HTTP API; exits with the command's code.
//! - `faas fn`, `faas invocations`: deploy and invoke functions, read invocations.
//! - `faas instances|snapshots|pools|health|metrics|logs|openapi|templates`: the rest of the
//!   API.
//! - `faas keys|tenants|usage|audit|whoami`: API keys, tenants and their quotas, usage, the
//!   audit trail (admin).
//! - `faas bench`: latency benchmark against `docker run` (see [`bench`]).

mod admin;
mod authbench;
mod bench;
mod benchkit;
mod client;
mod densitybench;
mod fnbench;
mod functions;
mod http;
mod images;
mod loadbench;
mod manage;
mod netbench;
mod portfwd;
mod procbench;
mod procs;
mod server;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "faas",
    version,
    about = "Serverless execution platform: run code in isolated sandboxes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the HTTP API server.
    Serve(ServeArgs),
    /// Check which backends work on this host.
    Doctor(HostArgs),
    /// Run a command through the API and exit with its exit code.
    Run(client::RunArgs),
    /// Benchmark execute latency side by side with `docker run`.
    Bench(bench::BenchArgs),
    /// Manage the native backend's image store.
    Images(images::ImagesArgs),
    /// Deploy, list, show, delete and invoke functions.
    #[command(name = "fn")]
    Fn(functions::FnArgs),
    /// Show async (and sync) invocations.
    Invocations(functions::InvocationsArgs),
    /// Create, list, exec into, stop, start, fork, snapshot and delete instances.
    Instances(manage::InstancesArgs),
    /// List, show, restore, branch and delete snapshots.
    Snapshots(manage::SnapshotsArgs),
    /// Warm pools: list, prewarm.
    Pools(manage::PoolsArgs),
    /// The server's health and backends.
    Health(manage::SimpleArgs),
    /// The server's counters (JSON, or `--prometheus`).
    Metrics(manage::MetricsArgs),
    /// Follow an execution's output as it happens.
    Logs(manage::LogsArgs),
    /// Print the server's OpenAPI document.
    Openapi(manage::SimpleArgs),
    /// The E2B surface's templates (`base` and `faas serve --template`) and their images.
    Templates(manage::SimpleArgs),
    /// API keys: create, list, revoke (admin).
    Keys(admin::KeysArgs),
    /// Tenants and their quotas: create, list, get, set (admin).
    Tenants(admin::TenantsArgs),
    /// What a tenant used, per day, function or instance.
    Usage(admin::UsageArgs),
    /// What admins did: keys made and revoked, tenants made, quotas changed (admin).
    Audit(admin::AuditArgs),
    /// The tenant, role and key id of the API key in use.
    Whoami(admin::WhoamiArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    Key,
    None,
}

/// The quotas of a tenant that sets none of its own; 0 is no limit.
#[derive(Args, Clone, Debug)]
pub struct QuotaDefaults {
    /// Sandboxes a tenant may have alive at once (executions, instances, function sandboxes).
    #[arg(long, env = "FAAS_QUOTA_CONCURRENT_SANDBOXES", default_value_t = 0)]
    pub quota_concurrent_sandboxes: u64,
    /// Instances a tenant may have (running or stopped).
    #[arg(long, env = "FAAS_QUOTA_INSTANCES", default_value_t = 0)]
    pub quota_instances: u64,
    /// Total memory limit (MiB) of a tenant's live sandboxes.
    #[arg(long, env = "FAAS_QUOTA_MEMORY_MB", default_value_t = 0)]
    pub quota_memory_mb: u64,
    /// Bytes of snapshots a tenant may keep.
    #[arg(long, env = "FAAS_QUOTA_SNAPSHOT_BYTES", default_value_t = 0)]
    pub quota_snapshot_bytes: u64,
    /// Functions a tenant may have.
    #[arg(long, env = "FAAS_QUOTA_FUNCTIONS", default_value_t = 0)]
    pub quota_functions: u64,
    /// Async invocations a tenant may have queued or running.
    #[arg(long, env = "FAAS_QUOTA_QUEUED_INVOCATIONS", default_value_t = 0)]
    pub quota_queued_invocations: u64,
    /// Requests per second a tenant may make (a token bucket refilled at this rate).
    #[arg(long, env = "FAAS_QUOTA_REQUESTS_PER_SECOND", default_value_t = 0)]
    pub quota_requests_per_second: u64,
    /// The bucket's size: requests a tenant may make at once [default: the rate].
    #[arg(long, env = "FAAS_QUOTA_BURST", default_value_t = 0)]
    pub quota_burst: u64,
}

impl QuotaDefaults {
    /// As the platform takes them (0: no limit).
    pub fn quotas(&self) -> faas_common::Quotas {
        let set = |v: u64| (v > 0).then_some(v);
        faas_common::Quotas {
            concurrent_sandboxes: set(self.quota_concurrent_sandboxes),
            instances: set(self.quota_instances),
            memory_mb: set(self.quota_memory_mb),
            snapshot_bytes: set(self.quota_snapshot_bytes),
            functions: set(self.quota_functions),
            queued_invocations: set(self.quota_queued_invocations),
            requests_per_second: set(self.quota_requests_per_second),
            burst: set(self.quota_burst),
            private_egress: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    Auto,
    Docker,
    Native,
}

/// The OCI runtime of the native backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum NativeRuntime {
    Crun,
    Runc,
    Runsc,
}

impl NativeRuntime {
    pub fn kind(self) -> faas_executor::sandbox::backends::native::runtime::RuntimeKind {
        use faas_executor::sandbox::backends::native::runtime::RuntimeKind;
        match self {
            NativeRuntime::Crun => RuntimeKind::Crun,
            NativeRuntime::Runc => RuntimeKind::Runc,
            NativeRuntime::Runsc => RuntimeKind::Runsc,
        }
    }
}

/// Sandboxes' egress (`network: "internet"` or rules).
#[derive(Args, Clone, Debug)]
pub struct NetArgs {
    /// Offer no network to sandboxes (only `network: "none"`).
    #[arg(long, env = "FAAS_NO_NETWORK")]
    pub no_network: bool,
    /// Where sandboxes' traffic leaves the host [default: the default route's interface].
    #[arg(long, env = "FAAS_EGRESS_INTERFACE")]
    pub egress_interface: Option<String>,
    /// Sandboxes' addresses come from this IPv4 network, a /30 each.
    #[arg(long, env = "FAAS_SANDBOX_SUBNET", default_value = "10.211.0.0/16")]
    pub sandbox_subnet: String,
    /// The resolver the platform's DNS proxy asks, `IP` or `IP:PORT` [default: the first
    /// nameserver of /etc/resolv.conf].
    #[arg(long, env = "FAAS_DNS_UPSTREAM")]
    pub dns_upstream: Option<String>,
    /// New connections a sandbox may have open at once (0: no limit).
    #[arg(long, env = "FAAS_EGRESS_MAX_CONNECTIONS", default_value_t = 256)]
    pub egress_max_connections: u32,
    /// A sandbox's egress rate in KiB/s (0: no limit) [default: 100 Mbit/s].
    #[arg(long, env = "FAAS_EGRESS_RATE_KIB", default_value_t = 12_800)]
    pub egress_rate_kib: u32,
}

/// Settings that decide what the executor can use on this host.
#[derive(Args, Clone, Debug)]
pub struct HostArgs {
    /// The static `faas-agent` binary mounted into every sandbox [default: found next to this
    /// binary or in target/x86_64-unknown-linux-gnu/release].
    #[arg(long, env = "FAAS_AGENT_PATH")]
    pub agent_path: Option<PathBuf>,
    /// The OCI runtime of the native backend (`isolation: gvisor` always uses runsc).
    #[arg(long, env = "FAAS_NATIVE_RUNTIME", value_enum, default_value = "crun")]
    pub native_runtime: NativeRuntime,
    /// The binary of that runtime [default: found in PATH].
    #[arg(long, env = "FAAS_NATIVE_RUNTIME_PATH")]
    pub native_runtime_path: Option<PathBuf>,
}

#[derive(Args, Clone, Debug)]
pub struct ServeArgs {
    #[arg(long, env = "FAAS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the server keeps its state (sandbox sockets, later the store and images).
    #[arg(long, env = "FAAS_DATA_DIR", default_value = "/var/lib/faas")]
    pub data_dir: PathBuf,
    #[arg(long, env = "FAAS_BACKEND", value_enum, default_value = "auto")]
    pub backend: BackendChoice,
    /// The image used when a request names none.
    #[arg(
        long,
        env = "FAAS_DEFAULT_IMAGE",
        default_value = "faas/busybox:latest"
    )]
    pub default_image: String,
    /// Largest `timeout_ms` a request may ask for.
    #[arg(long, env = "FAAS_MAX_TIMEOUT_MS", default_value_t = 600_000)]
    pub max_timeout_ms: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "FAAS_BODY_LIMIT", default_value_t = faas_gateway::DEFAULT_BODY_LIMIT)]
    pub body_limit: usize,
    /// The store: `sqlite://PATH` or `postgres://USER@HOST/DB`; default the SQLite file
    /// `faas.db` in the data dir.
    #[arg(long, env = "FAAS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// The image python and node functions run in when they name none.
    #[arg(
        long,
        env = "FAAS_FUNCTION_IMAGE",
        default_value = "faas/bookworm-python3.11-node18:latest"
    )]
    pub function_image: String,
    /// Async invocations this server runs at once.
    #[arg(long, env = "FAAS_QUEUE_WORKERS", default_value_t = 32)]
    pub queue_workers: usize,
    /// How long a claimed async invocation stays this server's without renewal (ms).
    #[arg(long, env = "FAAS_QUEUE_LEASE_MS", default_value_t = 10_000)]
    pub queue_lease_ms: u64,
    /// First retry delay of a failed async attempt (ms); it doubles each attempt.
    #[arg(long, env = "FAAS_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    /// A function sandbox unused this long is destroyed, beyond `min_warm` (ms).
    #[arg(long, env = "FAAS_FUNCTION_IDLE_MS", default_value_t = 300_000)]
    pub function_idle_ms: u64,
    /// `key`: every `/api/v1` request needs an API key. `none`: no authentication, for local
    /// development only (refused on a non-loopback listen address).
    #[arg(long, env = "FAAS_AUTH", value_enum, default_value = "key")]
    pub auth: AuthMode,
    /// Serve `/metrics` without a key (for a Prometheus scraper on a trusted network).
    #[arg(long, env = "FAAS_METRICS_PUBLIC")]
    pub metrics_public: bool,
    /// Requests for the host `{port}-{instance id}.D` go to that port of the instance (the
    /// port proxy; point a wildcard DNS record `*.D` at this server).
    #[arg(long, env = "FAAS_SANDBOX_DOMAIN", value_parser = parse_domain)]
    pub sandbox_domain: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM); needs `--tls-key`.
    #[arg(long, env = "FAAS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(long, env = "FAAS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// A template of the E2B surface, NAME=IMAGE (repeatable): `Sandbox.create("NAME")`
    /// runs IMAGE. `base`, unless named here, is the function image.
    #[arg(long = "template", value_name = "NAME=IMAGE", value_parser = procs::parse_kv)]
    pub templates: Vec<(String, String)>,
    #[command(flatten)]
    pub quotas: QuotaDefaults,
    #[command(flatten)]
    pub net: NetArgs,
    /// Shut down gracefully when standard input closes (for supervisors and tests that own
    /// the server's stdin).
    #[arg(long, hide = true)]
    pub shutdown_on_stdin_eof: bool,
    #[command(flatten)]
    pub host: HostArgs,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Serve(a) => server::serve(a).await.map(|()| 0),
            Cmd::Doctor(a) => server::doctor(a).await,
            Cmd::Run(a) => client::run(a).await,
            Cmd::Bench(a) => bench::run(a).await.map(|()| 0),
            Cmd::Images(a) => images::run(a).await,
            Cmd::Fn(a) => functions::run(a).await,
            Cmd::Invocations(a) => functions::run_invocations(a).await,
            Cmd::Instances(a) => manage::instances(a).await,
            Cmd::Snapshots(a) => manage::snapshots(a).await,
            Cmd::Pools(a) => manage::pools(a).await,
            Cmd::Health(a) => manage::health(a).await,
            Cmd::Metrics(a) => manage::metrics(a).await,
            Cmd::Logs(a) => manage::logs(a).await,
            Cmd::Openapi(a) => manage::openapi(a).await,
            Cmd::Templates(a) => manage::templates(a).await,
            Cmd::Keys(a) => admin::keys(a).await,
            Cmd::Tenants(a) => admin::tenants(a).await,
            Cmd::Usage(a) => admin::usage(a).await,
            Cmd::Audit(a) => admin::audit(a).await,
            Cmd::Whoami(a) => admin::whoami(a).await,
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("FAAS_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A domain name for `--sandbox-domain`: labels of letters, digits and hyphens.
fn parse_domain(s: &str) -> Result<String, String> {
    let d = s.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(d)
    } else {
        Err(format!("{s:?} is not a domain name"))
    }
}
