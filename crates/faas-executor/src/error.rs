//! The executor's error type.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is well-formed JSON but cannot be run as asked.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("image {0} not found")]
    ImageNotFound(String),
    /// The feature or backend is not offered; the message says why.
    #[error("{0}")]
    Unsupported(String),
    /// The backend exists but cannot serve right now (daemon down...).
    #[error("{0}")]
    BackendUnavailable(String),
    #[error("docker")]
    Docker(#[from] bollard::errors::Error),
    #[error("agent of sandbox {sandbox}: {message}")]
    Agent { sandbox: String, message: String },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
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
