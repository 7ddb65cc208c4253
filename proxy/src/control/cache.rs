//! `ctl cache [NAME]` and `ctl purge NAME KEY|PREFIX*`: what the response caches hold,
//! and removing entries.

use serde_json::json;
use std::sync::Arc;

use super::{Control, OpResult};
use crate::cache::Cache;

impl Control {
    fn cache_named(&self, name: &str) -> Result<Arc<Cache>, String> {
        let runtime = self.runtime.load();
        runtime
            .caches
            .iter()
            .find(|c| c.name == name)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = runtime.caches.iter().map(|c| c.name.as_str()).collect();
                if names.is_empty() {
                    format!("no cache named {name:?}; the configuration defines no [[caches]]")
                } else {
                    format!("no cache named {name:?}; caches: {}", names.join(", "))
                }
            })
    }

    /// Every cache's usage, or one cache's with its keys.
    pub(super) fn cache(&self, name: Option<&str>) -> OpResult {
        let caches = match name {
            Some(name) => vec![self.cache_named(name)?.report(true)],
            None => self
                .runtime
                .load()
                .caches
                .iter()
                .map(|c| c.report(false))
                .collect(),
        };
        Ok(json!({ "caches": caches }))
    }

    /// Removes `key` (or every key starting with it, when it ends with `*`) from cache
    /// `name`, in memory and on disk.
    pub(super) fn purge(&self, name: &str, key: &str) -> OpResult {
        let cache = self.cache_named(name)?;
        let (memory, disk) = cache.purge(key);
        tracing::info!(cache = name, key, memory, disk, "cache entries purged");
        Ok(
            json!({ "cache": name, "key": key, "purged": memory.max(disk), "memory": memory, "disk": disk }),
        )
    }
}
