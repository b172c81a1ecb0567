//! The async queue's workers: claim due invocations with a lease, run them, retry with
//! exponential backoff, dead-letter the exhausted ones, and POST the final result to the
//! callback URL when one was given.
//!
//! While a worker runs an attempt it renews its leases; a worker that crashed stops renewing,
//! and once its leases end another claims the work as a new attempt (the lost one is logged as
//! `worker_lost`). Every write of an outcome is fenced by owner and attempt, so a late worker
//! never overwrites a newer attempt.

use std::sync::Arc;
use std::time::Duration;

use faas_store::{now_ms, InvocationRecord};
use tokio::sync::Semaphore;

use super::{finish, info_of, Functions, InvocationError};

/// The dispatcher: claims as many due invocations as it has free workers, runs each in a task.
pub(crate) async fn run(f: Arc<Functions>) {
    let Some(store) = f.store.clone() else {
        return;
    };
    let lease = Duration::from_millis(f.cfg.queue_lease_ms);
    let slots = Arc::new(Semaphore::new(f.cfg.queue_workers.max(1)));
    let cancel = f.cancel.clone();
    let owner = f.owner.clone();
    {
        // Renews this server's leases while it runs.
        let (store, owner, cancel) = (store.clone(), owner.clone(), cancel.clone());
        f.sandboxes.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(lease / 4) => {}
                }
                let until = now_ms() + lease.as_millis() as i64;
                if let Err(e) = store.renew_leases(&owner, until).await {
                    tracing::warn!(error = %e, "renewing queue leases failed");
                }
            }
        });
    }
    loop {
        if cancel.is_cancelled() {
            return;
        }
        let free = slots.available_permits();
        if free == 0 {
            // Wait for a worker to finish.
            tokio::select! {
                _ = cancel.cancelled() => return,
                p = slots.clone().acquire_owned() => drop(p),
            }
            continue;
        }
        let until = now_ms() + lease.as_millis() as i64;
        let claimed = match store.claim_invocations(&owner, free as i64, until).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming queued invocations failed");
                Vec::new()
            }
        };
        if claimed.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = f.enqueued.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        for job in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let f2 = f.clone();
            f.sandboxes.tasks.spawn(async move {
                run_one(&f2, job).await;
                drop(permit);
            });
        }
    }
}

fn log_entry(attempt: i64, e: &InvocationError) -> serde_json::Value {
    serde_json::json!({
        "attempt": attempt,
        "type": e.kind,
        "message": e.message,
        "traceback": e.traceback,
        "at_ms": now_ms(),
    })
}

/// Runs one claimed attempt and records how it ended.
async fn run_one(f: &Arc<Functions>, mut job: InvocationRecord) {
    let owner = f.owner.clone();
    // Attempts that were claimed but never reported: their worker was lost.
    for a in (job.attempt_log.len() as i64 + 1)..job.attempts {
        job.attempt_log.push(log_entry(
            a,
            &InvocationError {
                kind: "worker_lost".into(),
                message:
                    "the server running this attempt stopped before it finished (its lease ended)"
                        .into(),
                traceback: None,
            },
        ));
    }
    if job.attempts > job.max_attempts {
        job.status = "dead_letter".into();
        job.finished_ms = Some(now_ms());
        settle(f, &owner, &job, None).await;
        return;
    }
    let loaded = match f
        .version_meta(&job.tenant, &job.function_name, Some(job.version))
        .await
    {
        Ok(meta) => f.load_version(&meta).await,
        Err(e) => Err(e),
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(crate::error::Error::NotFound(_)) => {
            let e = InvocationError {
                kind: "function_deleted".into(),
                message: format!(
                    "function {} version {} no longer exists",
                    job.function_name, job.version
                ),
                traceback: None,
            };
            job.status = "error".into();
            job.error = Some(super::error_value(&e));
            job.finished_ms = Some(now_ms());
            settle(f, &owner, &job, None).await;
            return;
        }
        Err(e) => {
            // The server cannot run it now (store or backend trouble): a failed attempt.
            let ie = InvocationError {
                kind: "sandbox_failed".into(),
                message: e.to_string(),
                traceback: None,
            };
            retry_or_dead_letter(f, &owner, job, ie, None).await;
            return;
        }
    };
    let value: serde_json::Value =
        serde_json::from_slice(&job.payload).unwrap_or(serde_json::Value::Null);
    let lease = match f.runners.lease(&loaded, None).await {
        Ok(l) => l,
        Err(e) => {
            let ie = InvocationError {
                kind: "function_deleted".into(),
                message: e.to_string(),
                traceback: None,
            };
            job.status = "error".into();
            job.error = Some(super::error_value(&ie));
            job.finished_ms = Some(now_ms());
            settle(f, &owner, &job, None).await;
            return;
        }
    };
    // A new sandbox needs room in the tenant's quotas; without it the attempt fails with
    // `quota_exceeded` and is retried later like any failed attempt.
    let outcome = f
        .runners
        .invoke(lease, &loaded, &job.id, &value, &job.payload)
        .await;
    let usage = super::attempt_usage(&job, &outcome, loaded.cfg.memory_mb);
    if outcome.status == "succeeded" {
        finish(&mut job, &outcome);
        settle(f, &owner, &job, usage.as_ref()).await;
        return;
    }
    let error = outcome.error.clone().unwrap_or(InvocationError {
        kind: outcome.status.into(),
        message: "the attempt failed".into(),
        traceback: None,
    });
    finish(&mut job, &outcome);
    retry_or_dead_letter(f, &owner, job, error, usage.as_ref()).await;
}

async fn retry_or_dead_letter(
    f: &Arc<Functions>,
    owner: &str,
    mut job: InvocationRecord,
    error: InvocationError,
    usage: Option<&faas_store::UsageRecord>,
) {
    job.attempt_log.push(log_entry(job.attempts, &error));
    job.error = Some(super::error_value(&error));
    if job.attempts < job.max_attempts {
        let shift = (job.attempts - 1).clamp(0, 16) as u32;
        let delay = f.cfg.retry_base_ms.saturating_mul(1u64 << shift);
        job.status = "queued".into();
        job.next_run_ms = now_ms() + delay as i64;
        job.finished_ms = None;
    } else {
        job.status = "dead_letter".into();
        job.finished_ms = Some(now_ms());
    }
    settle(f, owner, &job, usage).await;
}

/// Records the attempt's outcome (fenced) and, when it is final, calls the callback.
async fn settle(
    f: &Arc<Functions>,
    owner: &str,
    job: &InvocationRecord,
    usage: Option<&faas_store::UsageRecord>,
) {
    let Some(store) = f.store.clone() else {
        return;
    };
    match store.settle_invocation(owner, job, usage).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(invocation = %job.id, attempt = job.attempts, "outcome dropped: the attempt was taken over or the function deleted");
            return;
        }
        Err(e) => {
            // Its lease will end and another attempt will run it.
            tracing::error!(invocation = %job.id, error = %e, "recording an outcome failed");
            return;
        }
    }
    let is_final = job.status != "queued";
    if let (true, Some(url)) = (is_final, job.callback_url.clone()) {
        let body = info_of(job);
        f.sandboxes.tasks.spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build();
            let Ok(client) = client else { return };
            for attempt in 0..3u32 {
                match client.post(&url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => tracing::warn!(url = %url, status = %r.status(), "callback refused"),
                    Err(e) => tracing::warn!(url = %url, error = %e, "callback failed"),
                }
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        });
    }
}
