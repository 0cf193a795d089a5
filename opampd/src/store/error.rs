//! Why a write did not happen: the one error type of the store's writes,
//! whatever the backend.

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The operation itself refused or failed (validation, a query error…).
    #[error("{0:#}")]
    Job(anyhow::Error),
    /// The database could not commit (disk full, read-only, I/O).
    #[error("database write failed: {0}")]
    Storage(String),
    #[error("the database writer has stopped")]
    Stopped,
    /// The writer's queue stayed full (`database.max_queued_writes`).
    #[error("the database writer is overloaded")]
    Overloaded,
}

impl From<anyhow::Error> for WriteError {
    fn from(e: anyhow::Error) -> Self {
        WriteError::Job(e)
    }
}
