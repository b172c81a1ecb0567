//! Live output of running executions, for `GET /api/v1/logs/{id}/stream`.
//!
//! While an execution runs, its output chunks are kept here (they are capped by the output
//! limit) and sent to every subscriber; a subscriber that comes late first gets what was
//! produced so far. When it ends, subscribers get the exit event and the entry goes; the
//! finished execution is then read from the store, where [`Streams::finish_execution`] writes
//! it (in the background) with what it used.
//!
//! Execution ids may be chosen by the caller, so they are unique per tenant: entries are
//! keyed by [`Streams::key`] (tenant and id), and a tenant never sees another's.

use std::collections::HashMap;
use std::sync::Mutex;

use faas_common::{ExecuteResponse, Mode};
use faas_store::Store;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum OutputEvent {
    Stdout {
        data: String,
    },
    Stderr {
        data: String,
    },
    /// The last event: how the command ended.
    Exit(ExitEvent),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExitEvent {
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    pub truncated: bool,
    pub duration_ms: Option<f64>,
    pub error: Option<String>,
}

/// A client-chosen execution id: 1 to 64 of `A-Z a-z 0-9 _ -`.
pub fn check_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "request_id must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -, got {id:?}"
        )))
    }
}

#[derive(Default)]
struct Entry {
    events: Vec<OutputEvent>,
    subscribers: Vec<mpsc::UnboundedSender<OutputEvent>>,
}

#[derive(Default)]
pub struct Streams {
    running: Mutex<HashMap<String, Entry>>,
    /// Where finished executions are recorded; `None` runs without them.
    store: Option<Store>,
    /// Runs the records' writes.
    tasks: TaskTracker,
}

impl Streams {
    /// The entry of execution `id` of `tenant` (ids have no `/`).
    pub fn key(tenant: &str, id: &str) -> String {
        format!("{tenant}/{id}")
    }

    pub fn new(store: Option<Store>, tasks: TaskTracker) -> Self {
        Streams {
            running: Default::default(),
            store,
            tasks,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a starting execution; false when one with this id already runs.
    pub fn open(&self, id: &str) -> bool {
        let mut running = self.lock();
        if running.contains_key(id) {
            return false;
        }
        running.insert(id.to_string(), Entry::default());
        true
    }

    pub fn push(&self, id: &str, ev: OutputEvent) {
        if let Some(e) = self.lock().get_mut(id) {
            e.subscribers.retain(|s| s.send(ev.clone()).is_ok());
            e.events.push(ev);
        }
    }

    /// Sends the exit event and forgets the execution.
    pub fn finish(&self, id: &str, exit: ExitEvent) {
        if let Some(e) = self.lock().remove(id) {
            for s in e.subscribers {
                let _ = s.send(OutputEvent::Exit(exit.clone()));
            }
        }
    }

    /// What it produced so far, then what comes, ending with the exit event; `None` when no
    /// execution with this id runs.
    pub fn subscribe(&self, id: &str) -> Option<mpsc::UnboundedReceiver<OutputEvent>> {
        let mut running = self.lock();
        let e = running.get_mut(id)?;
        let (tx, rx) = mpsc::unbounded_channel();
        for ev in &e.events {
            let _ = tx.send(ev.clone());
        }
        e.subscribers.push(tx);
        Some(rx)
    }
}

impl OutputEvent {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            OutputEvent::Stdout { .. } => "stdout",
            OutputEvent::Stderr { .. } => "stderr",
            OutputEvent::Exit(_) => "exit",
        }
    }
}

impl Streams {
    /// The output of execution `id`: live while it runs (what it produced so far first), or
    /// as recorded once it finished; ends with the exit event. An execution that has not
    /// started yet is waited for a few seconds (a client may open the stream first).
    pub async fn stream_logs(
        &self,
        caller: &faas_common::Caller,
        id: &str,
    ) -> Result<mpsc::UnboundedReceiver<OutputEvent>> {
        check_id(id)?;
        let key = Self::key(&caller.tenant, id);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(rx) = self.subscribe(&key) {
                return Ok(rx);
            }
            if let Some(store) = &self.store {
                if let Some(rec) = store.get_execution(Some(&caller.tenant), id).await? {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    if !rec.stdout.is_empty() {
                        let _ = tx.send(OutputEvent::Stdout {
                            data: text(&rec.stdout),
                        });
                    }
                    if !rec.stderr.is_empty() {
                        let _ = tx.send(OutputEvent::Stderr {
                            data: text(&rec.stderr),
                        });
                    }
                    let _ = tx.send(OutputEvent::Exit(ExitEvent {
                        exit_code: rec.exit_code,
                        timed_out: false,
                        signal: None,
                        oom_killed: false,
                        truncated: false,
                        duration_ms: rec.duration_ms,
                        error: rec.error.clone(),
                    }));
                    return Ok(rx);
                }
            }
            if std::time::Instant::now() >= until {
                return Err(Error::NotFound(format!("no execution {id}")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Ends an execution's stream and records it with what it used (in the background: not
    /// on the hot path).
    pub(crate) fn finish_execution(
        &self,
        tenant: &str,
        request_id: &str,
        mode: Mode,
        r: &Result<ExecuteResponse>,
    ) {
        let exit = match r {
            Ok(resp) => ExitEvent {
                exit_code: Some(resp.exit_code),
                timed_out: resp.timed_out,
                signal: resp.signal,
                oom_killed: resp.oom_killed,
                truncated: resp.truncated,
                duration_ms: Some(resp.duration_ms),
                error: resp.error.clone(),
            },
            Err(e) => ExitEvent {
                exit_code: None,
                timed_out: false,
                signal: None,
                oom_killed: false,
                truncated: false,
                duration_ms: None,
                error: Some(e.to_string()),
            },
        };
        self.finish(&Self::key(tenant, request_id), exit);
        if let Some(store) = self.store.clone() {
            let now = faas_store::now_ms();
            let rec = match r {
                Ok(resp) => faas_store::ExecutionRecord {
                    id: request_id.to_string(),
                    tenant: tenant.to_string(),
                    mode: mode.to_string(),
                    backend: Some(resp.backend.clone()),
                    instance_id: resp.instance_id.clone(),
                    snapshot_id: resp.snapshot_id.clone(),
                    status: "finished".into(),
                    exit_code: Some(resp.exit_code),
                    stdout: resp.stdout.clone().into_bytes(),
                    stderr: resp.stderr.clone().into_bytes(),
                    error: resp.error.clone(),
                    duration_ms: Some(resp.duration_ms),
                    created_ms: now - resp.total_ms as i64,
                    finished_ms: Some(now),
                },
                Err(e) => faas_store::ExecutionRecord {
                    id: request_id.to_string(),
                    tenant: tenant.to_string(),
                    mode: mode.to_string(),
                    backend: None,
                    instance_id: None,
                    snapshot_id: None,
                    status: "failed".into(),
                    exit_code: None,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    error: Some(e.to_string()),
                    duration_ms: None,
                    created_ms: now,
                    finished_ms: Some(now),
                },
            };
            // What it used: the command's wall time, its box's CPU time, and its memory limit
            // held for that time.
            let usage = r.as_ref().ok().map(|resp| faas_store::UsageRecord {
                id: format!("exec:{request_id}:{}", rec.created_ms),
                tenant: tenant.to_string(),
                kind: "execution".into(),
                subject: resp.instance_id.clone(),
                wall_ms: resp.duration_ms,
                cpu_ms: resp.cpu_ms.unwrap_or(0.0),
                memory_mib_s: resp.memory_mb as f64 * resp.duration_ms / 1000.0,
                peak_memory_bytes: resp
                    .peak_memory_mb
                    .map_or(0, |m| (m * 1024.0 * 1024.0) as i64),
                at_ms: now,
            });
            self.tasks.spawn(async move {
                if let Err(e) = store.finish_execution(&rec, usage.as_ref()).await {
                    tracing::warn!(execution = %rec.id, error = %e, "could not record the execution");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn late_subscribers_get_the_past_then_the_rest() {
        let s = Streams::default();
        assert!(s.open("a"));
        assert!(!s.open("a"));
        s.push("a", OutputEvent::Stdout { data: "1".into() });
        let mut early = s.subscribe("a").unwrap();
        s.push("a", OutputEvent::Stderr { data: "2".into() });
        let mut late = s.subscribe("a").unwrap();
        let exit = ExitEvent {
            exit_code: Some(3),
            timed_out: false,
            signal: None,
            oom_killed: false,
            truncated: false,
            duration_ms: Some(1.0),
            error: None,
        };
        s.finish("a", exit.clone());
        for rx in [&mut early, &mut late] {
            assert_eq!(
                rx.recv().await,
                Some(OutputEvent::Stdout { data: "1".into() })
            );
            assert_eq!(
                rx.recv().await,
                Some(OutputEvent::Stderr { data: "2".into() })
            );
            assert_eq!(rx.recv().await, Some(OutputEvent::Exit(exit.clone())));
            assert_eq!(rx.recv().await, None);
        }
        assert!(s.subscribe("a").is_none());
    }
}
