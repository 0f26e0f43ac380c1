//! The durable [`MetaStore`], backed by sled.
//!
//! One sled tree holds every key; atomic batches map onto `sled::Batch`, and `flush` onto sled's
//! own fsync. Callers flush after writes whose loss a client would notice (a created topic, a
//! committed offset), so a confirmed change survives `kill -9`.

use std::path::Path;

use super::store::{MetaOp, MetaStore, Pairs};
use super::MetaError;

pub struct SledStore {
    db: sled::Db,
}

impl SledStore {
    /// Opens (creating if absent) the store in `dir`. A lock still held by a store of this
    /// process that is closing (sled releases it from a background thread after the last
    /// handle drops) is waited for briefly; a lock held elsewhere is reported as `Locked`.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        let mut attempts = 0;
        loop {
            match Self::try_open(dir) {
                Err(MetaError::Locked(_)) if attempts < 100 => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_open(dir: &Path) -> Result<Self, MetaError> {
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::LowSpace)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    MetaError::Locked(dir.to_path_buf())
                }
                other => MetaError::Backend(format!("opening {}: {other}", dir.display())),
            })?;
        Ok(Self { db })
    }
}

fn backend(e: sled::Error) -> MetaError {
    MetaError::Backend(e.to_string())
}

impl MetaStore for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.db.get(key).map_err(backend)?.map(|v| v.to_vec()))
    }

    fn apply(&self, ops: Vec<MetaOp>) -> Result<(), MetaError> {
        let mut batch = sled::Batch::default();
        for op in ops {
            match op {
                MetaOp::Put(k, v) => batch.insert(k, v),
                MetaOp::Delete(k) => batch.remove(k),
            }
        }
        self.db.apply_batch(batch).map_err(backend)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, MetaError> {
        self.db
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend))
            .collect()
    }

    fn flush(&self) -> Result<(), MetaError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}
