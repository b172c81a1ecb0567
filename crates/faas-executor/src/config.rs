//! The platform's settings, given to [`crate::platform::Platform::new`]; each service keeps
//! a copy and reads the parts it needs.

use crate::sandbox::Limits;

#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// The image used when a request names none.
    pub default_image: String,
    pub default_timeout_ms: u64,
    pub max_timeout_ms: u64,
    pub default_limits: Limits,
    pub max_memory_mb: u64,
    pub max_cpu_cores: f64,
    /// Cap on captured stdout+stderr per execution.
    pub output_limit: u64,
    /// Size a warm pool gets when a `cached` request first meets it.
    pub cached_pool_size: usize,
    /// Largest `count` a prewarm may ask for.
    pub max_pool_size: usize,
    /// Largest `count` a branch or fork may ask for.
    pub max_branch: usize,
    /// Where functions' code is unpacked.
    pub functions_dir: std::path::PathBuf,
    /// The image python and node functions run in when they name none.
    pub function_image: String,
    /// Largest invocation payload.
    pub max_payload_bytes: usize,
    /// A function sandbox unused this long is destroyed (beyond `min_warm`).
    pub function_idle_ms: u64,
    /// `max_concurrency` of a function that names none, and the most one may ask.
    pub function_concurrency: u32,
    pub max_function_concurrency: u32,
    /// Async invocations run at once by this server.
    pub queue_workers: usize,
    /// How long a claimed async invocation stays this server's without a renewal.
    pub queue_lease_ms: u64,
    /// First retry delay of a failed async attempt; it doubles each attempt.
    pub retry_base_ms: u64,
    /// The quotas of a tenant that sets none of its own (unset or 0: no limit).
    pub default_quotas: faas_common::Quotas,
}

impl Default for PlatformConfig {
    fn default() -> Self {
        PlatformConfig {
            default_image: "faas/busybox:latest".into(),
            default_timeout_ms: 30_000,
            max_timeout_ms: 600_000,
            default_limits: Limits::default(),
            max_memory_mb: 16 * 1024,
            max_cpu_cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as f64,
            output_limit: faas_agent::DEFAULT_OUTPUT_LIMIT,
            cached_pool_size: 4,
            max_pool_size: 1024,
            max_branch: 32,
            functions_dir: "/var/lib/faas/functions".into(),
            function_image: "faas/bookworm-python3.11-node18:latest".into(),
            max_payload_bytes: 6 * 1024 * 1024,
            function_idle_ms: 300_000,
            function_concurrency: 16,
            max_function_concurrency: 256,
            queue_workers: 32,
            queue_lease_ms: 10_000,
            retry_base_ms: 1_000,
            default_quotas: faas_common::Quotas::default(),
        }
    }
}
