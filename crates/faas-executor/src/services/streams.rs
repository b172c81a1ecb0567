//! Live output of running executions, for `GET /api/v1/logs/{id}/stream`.
//!
//! While an execution runs, its output chunks are kept here (they are capped by the output
//! limit) and sent to every subscriber; a subscriber that comes late first gets what was
//! produced so far. When it ends, subscribers get the exit event and the entry goes; the
//! finished execution is then read from the store.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::mpsc;

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
pub fn check_id(id: &str) -> crate::error::Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(crate::error::Error::InvalidRequest(format!(
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
}

impl Streams {
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

impl crate::service::Executor {
    /// The output of execution `id`: live while it runs (what it produced so far first), or
    /// as recorded once it finished; ends with the exit event. An execution that has not
    /// started yet is waited for a few seconds (a client may open the stream first).
    pub async fn stream_logs(
        &self,
        id: &str,
    ) -> crate::error::Result<mpsc::UnboundedReceiver<OutputEvent>> {
        check_id(id)?;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(rx) = self.streams.subscribe(id) {
                return Ok(rx);
            }
            if let Some(store) = &self.store {
                if let Some(rec) = store.get_execution(id).await? {
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
                return Err(crate::error::Error::NotFound(format!("no execution {id}")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Runs a command in an instance and returns its output as a stream at once.
    pub async fn instance_exec_stream(
        self: &std::sync::Arc<Self>,
        id: &str,
        req: faas_common::InstanceExecRequest,
    ) -> crate::error::Result<(String, mpsc::UnboundedReceiver<OutputEvent>)> {
        // Errors that need no run (unknown, stopped, bad input) are answered as errors.
        self.runnable(id, &req).await?;
        let rid = uuid::Uuid::new_v4().to_string();
        self.streams.open(&rid);
        let rx = self.streams.subscribe(&rid).expect("just opened");
        let (this, id, r2) = (self.clone(), id.to_string(), rid.clone());
        self.tasks.spawn(async move {
            let r = this.instance_exec_as(&id, req, Some(&r2)).await;
            this.finish_execution(&r2, faas_common::Mode::Persistent, &r);
        });
        Ok((rid, rx))
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
