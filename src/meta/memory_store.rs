//! An in-memory [`MetaStore`] for tests and throwaway embedded brokers: a `BTreeMap` behind a
//! mutex, so it keeps the same ordering and atomic-batch semantics as the sled store.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use super::store::{MetaOp, MetaStore, Pairs};
use super::MetaError;

#[derive(Default)]
pub struct MemoryStore {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl MetaStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, MetaError> {
        Ok(self.map.lock().get(key).cloned())
    }

    fn apply(&self, ops: Vec<MetaOp>) -> Result<(), MetaError> {
        let mut map = self.map.lock();
        for op in ops {
            match op {
                MetaOp::Put(k, v) => {
                    map.insert(k, v);
                }
                MetaOp::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, MetaError> {
        Ok(self
            .map
            .lock()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> Result<(), MetaError> {
        Ok(())
    }
}
