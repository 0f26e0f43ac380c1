//! Small helpers shared by several layers.

use std::hash::{BuildHasher, Hasher};

/// 128 random bits. std's `RandomState` is seeded from the OS per instance, which is all the
/// randomness ids need here (uniqueness, not secrecy), without a dependency for it.
pub fn random_bytes16() -> [u8; 16] {
    let mut id = [0u8; 16];
    for (i, half) in id.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        half.copy_from_slice(&h.finish().to_be_bytes());
    }
    id
}

/// Resolves once a shutdown flag turns true (or its sender is gone). Returns `()` rather than
/// watch's borrow guard, so it can sit in a `select!` inside a `Send` future.
pub async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
