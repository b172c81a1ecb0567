//! Snapshots of instances, restores of them into new instances, branches (several restores)
//! and forks (a snapshot, then its branches).

use std::time::Instant;

use faas_common::{
    BranchResponse, Caller, InstanceInfo, SnapshotCreateRequest, SnapshotInfo, SnapshotKind,
};
use faas_store::{now_ms, InstanceRecord, SnapshotRecord};

use super::{new_id, InstanceSpec, Instances, LiveBox, RestoreOptions, TRANSIENT_TAG};
use crate::error::{Error, Result};
use crate::services::tenants::Counted;

fn snapshot_info(r: &SnapshotRecord, took_ms: Option<f64>) -> SnapshotInfo {
    SnapshotInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        instance_id: r.instance_id.clone(),
        parent_id: r.parent_id.clone(),
        backend: r.backend.clone(),
        image: r.image.clone(),
        kind: if r.kind == "memory" {
            SnapshotKind::Memory
        } else {
            SnapshotKind::Filesystem
        },
        size_bytes: r.size_bytes.max(0) as u64,
        tags: r.tags.clone(),
        created_at_ms: r.created_ms,
        took_ms,
        checkpoint_ms: r.artifact["checkpoint_ms"].as_f64(),
    }
}

impl Instances {
    /// Deletes snapshot `id` if it is [`TRANSIENT_TAG`]ged and nothing depends on it any more.
    pub(super) async fn collect_transient(&self, id: &str) {
        let Ok(store) = self.store() else {
            return;
        };
        let Ok(Some(rec)) = store.get_snapshot(None, id).await else {
            return;
        };
        if !rec.tags.iter().any(|t| t == TRANSIENT_TAG) {
            return;
        }
        if !matches!(store.snapshot_dependents(id).await, Ok((0, 0))) {
            return;
        }
        let removed = match self.sandboxes.backend_named(&rec.backend) {
            Ok(b) => b.snapshot_remove(id, &rec.artifact).await,
            Err(e) => Err(e),
        };
        match removed {
            Ok(()) => {
                let _ = store.delete_snapshot(id).await;
                tracing::debug!(snapshot = id, "deleted with the last instance made from it");
            }
            Err(e) => {
                tracing::warn!(snapshot = id, error = %e, "could not delete a transient snapshot")
            }
        }
    }

    /// The caller's snapshot `id`; another tenant's is `not_found`, as a missing one.
    pub(crate) async fn snapshot_record(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<SnapshotRecord> {
        self.store()?
            .get_snapshot(Some(&caller.tenant), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no snapshot {id}")))
    }

    pub async fn snapshot_create(
        &self,
        caller: &Caller,
        req: SnapshotCreateRequest,
    ) -> Result<SnapshotInfo> {
        let id = req
            .instance_id
            .clone()
            .ok_or_else(|| Error::InvalidRequest("instance_id is required".into()))?;
        let t0 = Instant::now();
        let lock = self.lock(&id);
        let _held = lock.lock().await;
        let rec = self.instance_record(caller, &id).await?;
        let kept = self.store()?.snapshot_bytes(&caller.tenant).await?;
        self.tenants
            .check_count(
                &caller.tenant,
                Counted::SnapshotBytes,
                kept.max(0) as u64,
                1,
            )
            .await?;
        let backend = self.sandboxes.backend_named(&rec.backend)?;
        let sid = new_id();
        let live = self.live(&id);
        let (artifact, size) = backend
            .snapshot(
                &id,
                live.as_ref().map(|l| l.sandbox.as_ref()),
                &sid,
                req.memory,
            )
            .await?;
        let snap = SnapshotRecord {
            id: sid.clone(),
            tenant: caller.tenant.clone(),
            name: req.name.clone(),
            instance_id: Some(id.clone()),
            parent_id: rec.source_snapshot.clone(),
            backend: rec.backend.clone(),
            image: rec.image.clone(),
            kind: if req.memory { "memory" } else { "filesystem" }.into(),
            size_bytes: size as i64,
            tags: req.tags.clone(),
            artifact: artifact.clone(),
            spec: rec.spec.clone(),
            created_ms: now_ms(),
        };
        if let Err(e) = self.store()?.insert_snapshot(&snap).await {
            let _ = backend.snapshot_remove(&sid, &artifact).await;
            return Err(e.into());
        }
        Ok(snapshot_info(
            &snap,
            Some(t0.elapsed().as_secs_f64() * 1000.0),
        ))
    }

    pub async fn snapshot_list(&self, caller: &Caller) -> Result<Vec<SnapshotInfo>> {
        Ok(self
            .store()?
            .list_snapshots(Some(&caller.tenant))
            .await?
            .iter()
            .map(|r| snapshot_info(r, None))
            .collect())
    }

    pub async fn snapshot_get(&self, caller: &Caller, id: &str) -> Result<SnapshotInfo> {
        Ok(snapshot_info(
            &self.snapshot_record(caller, id).await?,
            None,
        ))
    }

    /// Deletes a snapshot nothing depends on (409 while an instance restored or branched from
    /// it, or a snapshot taken on top of it, exists).
    pub async fn snapshot_delete(&self, caller: &Caller, id: &str) -> Result<()> {
        let rec = self.snapshot_record(caller, id).await?;
        let (instances, snapshots) = self.store()?.snapshot_dependents(id).await?;
        if instances + snapshots > 0 {
            return Err(Error::Conflict(format!(
                "snapshot {id} is in use: {instances} instance(s) and {snapshots} snapshot(s) depend on it; delete them first"
            )));
        }
        self.sandboxes
            .backend_named(&rec.backend)?
            .snapshot_remove(id, &rec.artifact)
            .await?;
        self.store()?.delete_snapshot(id).await?;
        if let Some(parent) = &rec.parent_id {
            self.collect_transient(parent).await;
        }
        Ok(())
    }

    /// A new running instance with the snapshot's files.
    pub async fn snapshot_restore(&self, caller: &Caller, id: &str) -> Result<InstanceInfo> {
        let snap = self.snapshot_record(caller, id).await?;
        self.restore_record(caller, &snap).await
    }

    /// [`Instances::snapshot_restore`] with what only the platform's own surfaces ask for.
    pub async fn snapshot_restore_with(
        &self,
        caller: &Caller,
        id: &str,
        opts: RestoreOptions,
    ) -> Result<InstanceInfo> {
        let snap = self.snapshot_record(caller, id).await?;
        self.restore_record_with(caller, &snap, Some(opts)).await
    }

    /// A new instance of the caller's from the snapshot `snap` (which the caller's must be).
    pub(crate) async fn restore_record(
        &self,
        caller: &Caller,
        snap: &SnapshotRecord,
    ) -> Result<InstanceInfo> {
        self.restore_record_with(caller, snap, None).await
    }

    async fn restore_record_with(
        &self,
        caller: &Caller,
        snap: &SnapshotRecord,
        opts: Option<RestoreOptions>,
    ) -> Result<InstanceInfo> {
        let backend = self.sandboxes.backend_named(&snap.backend)?;
        let mut spec = InstanceSpec::parse(&snap.spec, &format!("snapshot {}", snap.id))?;
        if spec.ports_token.is_some() {
            spec.ports_token = Some(super::new_token()?);
        }
        let wants_token = opts.as_ref().is_some_and(|o| o.create.access_token);
        if spec.access_token.is_some() || wants_token {
            spec.access_token = Some(super::new_token()?);
        }
        spec.deadline = None;
        let timeout = opts.as_ref().and_then(|o| o.create.timeout);
        if let Some(o) = opts {
            spec.deadline = o.create.timeout.map(|t| super::deadline_after(now_ms(), t));
            spec.template = o.create.template.or(spec.template);
            spec.metadata = o.metadata;
            spec.open_ports |= o.create.open_ports;
            super::check_metadata(&spec.metadata)?;
            for (k, v) in o.env {
                spec.env.retain(|(have, _)| *have != k);
                spec.env.push((k, v));
            }
        }
        let lease = self.admit(caller, 1, spec.memory_mb).await?;
        let id = if spec.open_ports {
            super::long_id()
        } else {
            new_id()
        };
        let now = now_ms();
        // Recorded first: the snapshot cannot be deleted while its restore is being made.
        let rec = InstanceRecord {
            id: id.clone(),
            tenant: caller.tenant.clone(),
            name: None,
            backend: snap.backend.clone(),
            image: snap.image.clone(),
            status: "stopped".into(),
            status_reason: Some("being restored".into()),
            spec: serde_json::to_value(&spec).expect("serializable"),
            source_snapshot: Some(snap.id.clone()),
            created_ms: now,
            updated_ms: now,
            last_used_ms: now,
        };
        let store = self.store()?;
        store.insert_instance(&rec).await?;
        let made = backend
            .instance_create(&id, &spec.sandbox(&snap.image), Some(&snap.artifact))
            .await;
        match made {
            Ok(sandbox) => {
                if let Some(t) = timeout {
                    // From when it is up, not from when it was asked for.
                    spec.deadline = Some(super::deadline_after(now_ms(), t));
                    let kept = serde_json::to_value(&spec).expect("serializable");
                    store.set_instance_spec(&id, &kept).await?;
                }
                self.set_live(
                    &id,
                    Some(LiveBox::new(
                        sandbox,
                        &spec,
                        &caller.tenant,
                        lease,
                        now_ms(),
                    )),
                );
                store.set_instance_status(&id, "running", None).await?;
                self.instance_get(caller, &id).await
            }
            Err(e) => {
                let _ = store.delete_instance(&id).await;
                Err(e)
            }
        }
    }

    /// `count` new instances, each with the snapshot's files, independent of each other.
    pub async fn snapshot_branch(
        &self,
        caller: &Caller,
        id: &str,
        count: u32,
    ) -> Result<BranchResponse> {
        let t0 = Instant::now();
        self.check_branch_count(count)?;
        let snap = self.snapshot_record(caller, id).await?;
        let instances = self.branch_record(caller, &snap, count).await?;
        Ok(BranchResponse {
            instances,
            snapshot_id: snap.id,
            took_ms: t0.elapsed().as_secs_f64() * 1000.0,
        })
    }

    fn check_branch_count(&self, count: u32) -> Result<()> {
        if count == 0 || count as usize > self.cfg.max_branch {
            return Err(Error::InvalidRequest(format!(
                "count must be between 1 and {}, got {count}",
                self.cfg.max_branch
            )));
        }
        Ok(())
    }

    async fn branch_record(
        &self,
        caller: &Caller,
        snap: &SnapshotRecord,
        count: u32,
    ) -> Result<Vec<InstanceInfo>> {
        // All of them fit in the instances quota, or none is made.
        let have = self.store()?.count_instances(&caller.tenant).await?;
        self.tenants
            .check_count(
                &caller.tenant,
                Counted::Instances,
                have.max(0) as u64,
                count as u64,
            )
            .await?;
        let made =
            futures::future::join_all((0..count).map(|_| self.restore_record(caller, snap))).await;
        let mut ok = Vec::new();
        let mut failed = None;
        for r in made {
            match r {
                Ok(i) => ok.push(i),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            // All or nothing.
            for i in &ok {
                let _ = self.instance_delete(caller, &i.id).await;
            }
            return Err(e);
        }
        Ok(ok)
    }

    /// Snapshots instance `id`, then branches the snapshot `count` times.
    pub async fn instance_fork(
        &self,
        caller: &Caller,
        id: &str,
        count: u32,
    ) -> Result<BranchResponse> {
        self.instance_fork_with(caller, id, count, false).await
    }

    /// [`Instances::instance_fork`]; with `transient`, the snapshot is the forks' alone: it is
    /// tagged [`TRANSIENT_TAG`] and deleted with the last of them.
    pub async fn instance_fork_with(
        &self,
        caller: &Caller,
        id: &str,
        count: u32,
        transient: bool,
    ) -> Result<BranchResponse> {
        let t0 = Instant::now();
        self.check_branch_count(count)?;
        let mut tags = vec!["fork".to_string()];
        if transient {
            tags.push(TRANSIENT_TAG.into());
        }
        let snap = self
            .snapshot_create(
                caller,
                SnapshotCreateRequest {
                    instance_id: Some(id.to_string()),
                    name: Some(format!("fork of {id}")),
                    tags,
                    memory: false,
                },
            )
            .await?;
        let rec = self.snapshot_record(caller, &snap.id).await?;
        let instances = match self.branch_record(caller, &rec, count).await {
            Ok(i) => i,
            Err(e) => {
                if transient {
                    self.collect_transient(&snap.id).await;
                }
                return Err(e);
            }
        };
        Ok(BranchResponse {
            instances,
            snapshot_id: snap.id,
            took_ms: t0.elapsed().as_secs_f64() * 1000.0,
        })
    }
}
