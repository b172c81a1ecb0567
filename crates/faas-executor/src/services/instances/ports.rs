//! The ports of a running instance: what listens in it, and connections to a port, made by
//! its agent inside the box (`127.0.0.1:port`) and carried over the agent's socket, so they
//! work with `network: "none"` and no network namespace is entered on the host.
//!
//! Who may connect: the owner tenant's callers, or, for an instance made with
//! `public_ports`, whoever shows its `ports_token` (compared in constant time).

use std::sync::Arc;

use faas_common::Caller;
use subtle::ConstantTimeEq;
use tokio::net::UnixStream;

use super::{Busy, Instances, LiveBox};
use crate::error::{Error, Result};

/// Keeps its instance in use (not stopped as idle) while a connection to one of its ports
/// lives; clones share it.
#[derive(Clone)]
pub struct PortLease(#[allow(dead_code)] Arc<Busy>);

/// A connection to a port of an instance: its bytes both ways, and its lease.
pub struct PortConn {
    pub stream: UnixStream,
    pub lease: PortLease,
}

/// Who asks for a port.
#[derive(Clone, Copy)]
pub enum PortAccess<'a> {
    /// A caller with a key: the instance must be its tenant's, unless `token` opens it.
    Caller(&'a Caller, Option<&'a str>),
    /// No key: only the token of an instance with public ports.
    Token(&'a str),
    /// Neither: only an instance whose ports are open to whoever names them.
    Anonymous,
}

impl Instances {
    /// The box a port request may reach: the caller's own running instance, or one whose
    /// ports the token opens. Another tenant's instance, or a wrong token, is `not_found`.
    fn port_box(&self, access: PortAccess<'_>, id: &str) -> Option<Arc<LiveBox>> {
        let (caller, token) = match access {
            PortAccess::Caller(c, t) => (Some(c), t),
            PortAccess::Token(t) => (None, Some(t)),
            PortAccess::Anonymous => (None, None),
        };
        if let Some(live) = caller.and_then(|c| self.live_of(c, id)) {
            return Some(live);
        }
        let live = self.live(id)?;
        if live.open_ports {
            return Some(live);
        }
        let want = live.ports_token.as_deref()?;
        bool::from(want.as_bytes().ct_eq(token?.as_bytes())).then_some(live)
    }

    async fn port_box_or_why(&self, access: PortAccess<'_>, id: &str) -> Result<Arc<LiveBox>> {
        if let Some(live) = self.port_box(access, id) {
            return Ok(live);
        }
        match access {
            // Not running, or not the caller's: what any other instance call would say.
            PortAccess::Caller(c, _) => self.running_box(c, id).await,
            PortAccess::Token(_) => Err(Error::NotFound(format!("no instance {id}"))),
            PortAccess::Anonymous => Err(Error::Unauthenticated(
                "this port needs an API key, or the instance's ports token (faas_token)".into(),
            )),
        }
    }

    /// The caller an envd request for running instance `id` acts as: its tenant's, when
    /// `token` is the instance's access token. An instance that is not running, has no token
    /// (not made through the E2B surface) or another one: `not_found`.
    pub fn envd_caller(&self, id: &str, token: Option<&str>) -> Result<Caller> {
        let gone = || Error::NotFound(format!("The sandbox {id} was not found"));
        let live = self.live(id).ok_or_else(gone)?;
        let want = live.access_token.as_deref().ok_or_else(gone)?;
        let token = token.ok_or_else(|| {
            Error::Unauthenticated("this sandbox needs its access token (X-Access-Token)".into())
        })?;
        if !bool::from(want.as_bytes().ct_eq(token.as_bytes())) {
            return Err(Error::Unauthenticated(
                "the sandbox's access token does not match".into(),
            ));
        }
        Ok(Caller::platform_for(&live.tenant))
    }

    /// For a request signed with a running instance's access token (E2B's file URLs): the
    /// instance (`id`, or, when the URL names none, any whose token `signed` accepts) and the
    /// caller it acts as.
    pub fn envd_caller_signed(
        &self,
        id: Option<&str>,
        signed: impl Fn(&str) -> bool,
    ) -> Result<(String, Caller)> {
        let live: Vec<(String, Arc<LiveBox>)> = match id {
            Some(id) => self
                .live(id)
                .map(|l| (id.to_string(), l))
                .into_iter()
                .collect(),
            None => self
                .live
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, l)| l.access_token.is_some())
                .map(|(k, l)| (k.clone(), l.clone()))
                .collect(),
        };
        live.into_iter()
            .find(|(_, l)| l.access_token.as_deref().is_some_and(&signed))
            .map(|(id, l)| (id, Caller::platform_for(&l.tenant)))
            .ok_or_else(|| {
                Error::Unauthenticated("the signature matches no running sandbox".into())
            })
    }

    /// The TCP ports something listens on in the caller's running instance `id`.
    pub async fn ports_list(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Vec<faas_agent::ListeningPort>> {
        let live = self.running_box(caller, id).await?;
        live.sandbox
            .agent()
            .listening_ports()
            .await
            .map_err(|e| Self::box_gone(id, e))
    }

    /// A connection to `port` of instance `id`, made inside its box. Nothing listening there:
    /// `port_closed`.
    pub async fn port_connect(
        &self,
        access: PortAccess<'_>,
        id: &str,
        port: u16,
    ) -> Result<PortConn> {
        if port == 0 {
            return Err(Error::InvalidRequest("port 0 is not a port".into()));
        }
        let live = self.port_box_or_why(access, id).await?;
        let busy = Busy::new(&live);
        let stream = live
            .sandbox
            .agent()
            .tunnel(port)
            .await
            .map_err(|e| Self::box_gone(id, e))?;
        Ok(PortConn {
            stream,
            lease: PortLease(Arc::new(busy)),
        })
    }
}
