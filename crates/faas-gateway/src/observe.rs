//! What the gateway measures for Prometheus: request latency by route, method and status,
//! execution and invocation latency, and per-tenant counters (requests, executions,
//! invocations, CPU seconds, requests refused by quota or rate). Recorded by one middleware
//! around every route, plus the handlers that know a command's CPU time.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use faas_common::Caller;

use crate::AppState;

/// Upper bounds (seconds) of the latency buckets.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    120.0,
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += secs;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (b, n) in BUCKETS.iter().zip(self.counts) {
            cum += n;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct TenantCounts {
    requests: u64,
    executions: u64,
    invocations: u64,
    cpu_seconds: f64,
    rejected_quota: u64,
    rejected_rate: u64,
}

/// A per-tenant counter: its name, its help and how to read it.
type Counter = (&'static str, &'static str, fn(&TenantCounts) -> f64);

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), Histogram>,
    executions: Histogram,
    invocations: Histogram,
    tenants: BTreeMap<String, TenantCounts>,
}

/// The gateway's measurements.
#[derive(Debug, Default)]
pub struct Observe {
    inner: Mutex<Inner>,
}

impl Observe {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// CPU time a tenant's command used (an execute or an instance exec).
    pub fn cpu(&self, tenant: &str, ms: Option<f64>) {
        if let Some(ms) = ms {
            self.with(|i| i.tenants.entry(tenant.into()).or_default().cpu_seconds += ms / 1000.0);
        }
    }

    /// The Prometheus text of everything measured here.
    pub fn prometheus(&self, out: &mut String) {
        self.with(|i| {
            let name = "faas_http_request_duration_seconds";
            let _ = writeln!(out, "# HELP {name} HTTP requests, by route, method and status.\n# TYPE {name} histogram");
            for ((route, method, status), h) in &i.requests {
                let labels = format!(
                    "route=\"{}\",method=\"{method}\",status=\"{status}\"",
                    route.replace('"', "\\\"")
                );
                h.write(out, name, &labels);
            }
            for (name, help, h) in [
                ("faas_execution_duration_seconds", "Execute requests that succeeded, whole request.", &i.executions),
                ("faas_invocation_duration_seconds", "Function invokes that succeeded, whole request.", &i.invocations),
            ] {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
                h.write(out, name, "");
            }
            let counters: [Counter; 6] = [
                ("faas_tenant_requests_total", "Authenticated requests, by tenant.", |t| t.requests as f64),
                ("faas_tenant_executions_total", "Executions that succeeded, by tenant.", |t| t.executions as f64),
                ("faas_tenant_invocations_total", "Function invokes that succeeded, by tenant.", |t| t.invocations as f64),
                ("faas_tenant_cpu_seconds_total", "CPU time of executions and instance execs, by tenant.", |t| t.cpu_seconds),
                ("faas_tenant_rejected_quota_total", "Requests refused by a quota, by tenant.", |t| t.rejected_quota as f64),
                ("faas_tenant_rejected_rate_total", "Requests refused by the rate limit, by tenant.", |t| t.rejected_rate as f64),
            ];
            for (name, help, get) in counters {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (tenant, t) in &i.tenants {
                    let _ = writeln!(out, "{name}{{tenant=\"{tenant}\"}} {}", get(t));
                }
            }
        });
    }
}

/// Counts a request refused before its handler (`rate`) or by a quota (`quota`).
pub fn rejected(s: &AppState, tenant: &str, why: &str) {
    s.observe.with(|i| {
        let t = i.tenants.entry(tenant.into()).or_default();
        match why {
            "rate" => t.rejected_rate += 1,
            _ => t.rejected_quota += 1,
        }
    });
}

/// Times every request. It wraps [`crate::auth::authenticate`], which puts the caller in the
/// answer's extensions for it.
pub async fn measure(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let resp = next.run(req).await;
    let secs = t0.elapsed().as_secs_f64();
    let status = resp.status().as_u16();
    let tenant = resp.extensions().get::<Caller>().map(|c| c.tenant.clone());
    s.observe.with(|i| {
        let ok = (200..300).contains(&status);
        if ok && (route == "/api/v1/execute" || route == "/api/v1/execute/advanced") {
            i.executions.observe(secs);
        }
        let invoke = route.ends_with("/invoke");
        if ok && invoke {
            i.invocations.observe(secs);
        }
        i.requests
            .entry((route.clone(), method, status))
            .or_default()
            .observe(secs);
        if let Some(t) = tenant {
            let t = i.tenants.entry(t).or_default();
            t.requests += 1;
            if ok && route.starts_with("/api/v1/execute") {
                t.executions += 1;
            }
            if ok && invoke {
                t.invocations += 1;
            }
            // Rate refusals never reach here with their caller: auth counted them.
            if status == 429 {
                t.rejected_quota += 1;
            }
        }
    });
    resp
}
