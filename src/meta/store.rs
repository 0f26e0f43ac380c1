//! The key-value contract every metadata backend fulfils.
//!
//! Metadata is small and written rarely compared with the log (definitions, committed offsets,
//! producer ids, queue ack state), so the contract is a plain ordered byte map with prefix scans
//! and atomic multi-key batches. Typed access lives one level up in [`super::Meta`]; backends know
//! nothing of topics or queues, which keeps a second backend (the in-memory one for tests, or a
//! future one) a few dozen lines.

use super::MetaError;

/// One write in an atomic batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Key-value pairs as a scan returns them.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered byte map. Implementations must be safe to share between threads.
pub trait MetaStore: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError>;

    /// Applies every op or none.
    fn apply(&self, ops: Vec<MetaOp>) -> Result<(), MetaError>;

    /// All pairs whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, MetaError>;

    /// Makes every applied op durable.
    fn flush(&self) -> Result<(), MetaError>;

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), MetaError> {
        self.apply(vec![MetaOp::Put(key.to_vec(), value.to_vec())])
    }

    fn delete(&self, key: &[u8]) -> Result<(), MetaError> {
        self.apply(vec![MetaOp::Delete(key.to_vec())])
    }
}
