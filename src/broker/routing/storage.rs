//! Where queues live on disk: escaped directory names (a recorded short name when the escaped one does not fit the filesystem), opening queue logs, and clean-up of directories no definition owns.

use super::*;

impl RouterInner {
    /// Deletes `<queues>/<vhost>/<name>` directories of queues that are not durable.
    pub(super) fn remove_stale_dirs(&self, kept: &HashSet<PathBuf>) {
        let Ok(vhosts) = std::fs::read_dir(&self.queues_dir) else {
            return;
        };
        for vhost in vhosts.flatten() {
            let Ok(names) = std::fs::read_dir(vhost.path()) else {
                continue;
            };
            for entry in names.flatten() {
                let path = entry.path();
                if !kept.contains(&path) {
                    if let Err(e) = std::fs::remove_dir_all(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove a transient queue's log");
                    }
                }
            }
        }
    }

    pub(super) fn queue_dir(&self, def: &QueueDef) -> PathBuf {
        match &def.storage_dir {
            Some(leaf) => self.queues_dir.join(LONG_NAME_DIR).join(leaf),
            None => self
                .queues_dir
                .join(escape_path_component(&def.vhost))
                .join(escape_path_component(&def.name)),
        }
    }

    pub(super) fn open_queue(
        &self,
        def: QueueDef,
        exclusive_owner: Option<u64>,
        state: Option<&[u8]>,
    ) -> Result<Queue, RoutingError> {
        let dir = self.queue_dir(&def);
        let labels = LogLabels {
            topic: format!("queue:{}:{}", def.vhost, def.name),
            partition: 0,
        };
        let mut config = self.queue_log_config.clone();
        if !def.durable || exclusive_owner.is_some() {
            // A transient (or exclusive) queue does not survive a restart, so nothing is gained by syncing
            // it: its publishes are confirmed once written (as RabbitMQ confirms them on
            // enqueue), and only durable queues pay for fsync.
            config.fsync = crate::log::FsyncPolicy::Never;
        }
        let (log, _report) = PartitionHandle::open(&dir, config, self.clock.clone(), labels)?;
        let meta = (def.durable && exclusive_owner.is_none()).then(|| self.meta.clone());
        // Arguments were validated at declare; a stored definition that no longer parses
        // runs without limits rather than failing the whole start-up.
        let limits = QueueLimits::from_arguments(&def.arguments).unwrap_or_else(|e| {
            tracing::warn!(queue = %def.name, error = %e, "ignoring invalid queue arguments");
            QueueLimits::default()
        });
        Ok(Queue::new(
            QueueSetup {
                def,
                exclusive_owner,
                log,
                dir,
                meta,
                limits,
                clock: self.clock.clone(),
                flusher: Some(self.state_flusher.clone()),
            },
            state,
        ))
    }
}

/// Maps any name to one safe directory name: ASCII letters, digits, `-` and `_` stay, every
/// other byte becomes `%XX`. Injective (so two queues never share a directory), never `.`,
/// `..` or empty, and reversible by reading the escapes.
pub fn escape_path_component(name: &str) -> String {
    if name.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The longest directory name the filesystems Ferry runs on accept (`NAME_MAX`).
pub(super) const MAX_DIR_NAME: usize = 255;

/// Parent of the log directories of queues whose escaped names would not fit. Escaping never
/// produces `~`, so no vhost's directory can be called that.
pub(super) const LONG_NAME_DIR: &str = "~";

/// A fresh directory name for a queue whose escaped vhost or name exceeds [`MAX_DIR_NAME`]
/// (127 x `ü` is 254 bytes but 762 escaped): the start of the escaped name, for whoever lists
/// the directory, then a random suffix that makes it unique. The mapping is kept in the queue's
/// definition, so unlike a hash it cannot collide, whatever names a client picks.
pub(super) fn long_name_storage_dir(vhost: &str, name: &str) -> Option<String> {
    let fits = |s: &str| escape_path_component(s).len() <= MAX_DIR_NAME;
    if fits(vhost) && fits(name) {
        return None;
    }
    let readable: String = escape_path_component(name).chars().take(64).collect();
    Some(format!("{readable}~{}", random_suffix()))
}

/// Removes a partition's or queue's directory; one that is already gone is fine.
pub(crate) fn remove_dir_if_present(dir: &Path) -> Result<(), LogError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LogError::Io {
            context: format!("removing {}", dir.display()),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_is_safe_and_injective() {
        assert_eq!(escape_path_component("/"), "%2F");
        assert_eq!(escape_path_component(".."), "%2E%2E");
        assert_eq!(escape_path_component(""), "%");
        assert_eq!(escape_path_component("a%2F"), "a%252F");
        assert_ne!(escape_path_component("a/b"), escape_path_component("a%2Fb"));
        assert_eq!(escape_path_component("orders_v1-x"), "orders_v1-x");
    }
}
