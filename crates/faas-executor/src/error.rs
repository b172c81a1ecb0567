//! The executor's error type.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is well-formed JSON but cannot be run as asked.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    /// An instance, snapshot or execution that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The target's state forbids it now.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    RateLimited(String),
    /// One of the tenant's quotas is used up; the message names it.
    #[error("{0}")]
    QuotaExceeded(String),
    /// No key, or a key that is unknown, expired or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's role may not do this.
    #[error("{0}")]
    Forbidden(String),
    #[error("store")]
    Store(#[from] faas_store::StoreError),
    /// Nothing listens on the port of the box a request was for.
    #[error("{0}")]
    PortClosed(String),
    /// The feature or backend is not offered; the message says why.
    #[error("{0}")]
    Unsupported(String),
    /// The backend exists but cannot serve right now (daemon down...).
    #[error("{0}")]
    BackendUnavailable(String),
    /// The daemon answered with an error.
    #[error("docker")]
    Docker(#[source] bollard::errors::Error),
    /// Nothing ran: the agent's socket did not accept the connection.
    #[error("agent of sandbox {sandbox} is unreachable: {message}")]
    AgentUnreachable { sandbox: String, message: String },
    #[error("agent of sandbox {sandbox}: {message}")]
    Agent { sandbox: String, message: String },
    /// An OCI runtime command failed.
    #[error("{command} failed ({status}): {stderr}")]
    Runtime {
        command: String,
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("{command} did not finish within {after:?}")]
    RuntimeTimeout {
        command: String,
        after: std::time::Duration,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl From<bollard::errors::Error> for Error {
    fn from(e: bollard::errors::Error) -> Self {
        match e {
            e @ bollard::errors::Error::DockerResponseServerError { .. } => Error::Docker(e),
            // Transport failures: the daemon is down or unreachable, not a bug of ours.
            e => Error::BackendUnavailable(format!("cannot reach the docker daemon: {e}")),
        }
    }
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The whole chain of causes, for logs.
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(self);
        while let Some(e) = cur {
            s.push_str(": ");
            s.push_str(&e.to_string());
            cur = e.source();
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_transport_failures_mean_the_backend_is_unavailable() {
        let e: Error = bollard::errors::Error::RequestTimeoutError.into();
        assert!(matches!(e, Error::BackendUnavailable(_)), "{e:?}");
        let e: Error = bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: "boom".into(),
        }
        .into();
        assert!(matches!(e, Error::Docker(_)), "{e:?}");
        assert!(e.chain().contains("boom"), "{}", e.chain());
    }
}
