//! `[plugins]`: where plugins come from, their sandbox limits, and the plugin tables
//! (`balancer_config`, `router_config`) and `router` keys that name them.

use std::path::Path;
use std::time::Duration;
use toml::Spanned;

use super::default_cache_dir;
use super::model::{PluginLimits, PluginSettings, RouterUse};
use super::raw::{PluginTable, RawLimits, RawPlugins, Text};
use super::validate::{Bounds, Validator};

impl Validator<'_> {
    pub(super) fn plugins(&mut self, raw: Option<RawPlugins>) -> PluginSettings {
        let Some(raw) = raw else {
            return PluginSettings {
                dir: None,
                cache_dir: default_cache_dir(),
                limits: PluginLimits::default(),
            };
        };
        let base = self.file.parent().unwrap_or(Path::new("."));
        let dir = raw.dir.map(|d| base.join(d.get_ref()));
        // An empty string turns the cache off.
        let cache_dir = match raw.cache_dir {
            Some(d) if d.get_ref().is_empty() => None,
            Some(d) => Some(base.join(d.get_ref())),
            None => default_cache_dir(),
        };
        let mut limits = PluginLimits::default();
        if let Some(l) = &raw.limits {
            limits = self.limits(l, "plugins.limits", &limits);
        }
        PluginSettings {
            dir,
            cache_dir,
            limits,
        }
    }

    /// `base` with the keys of `raw` applied.
    pub(super) fn limits(
        &mut self,
        raw: &RawLimits,
        field: &str,
        base: &PluginLimits,
    ) -> PluginLimits {
        let mut limits = base.clone();
        // A call runs on a proxy thread: a second is already far too long.
        let call = Bounds {
            min: Duration::from_micros(100),
            max: Duration::from_secs(1),
        };
        limits.call_timeout = self.duration(
            raw.call_timeout.as_ref(),
            &format!("{field}.call_timeout"),
            base.call_timeout,
            call,
        );
        let init = Bounds {
            min: Duration::from_millis(1),
            max: Duration::from_secs(60),
        };
        limits.init_timeout = self.duration(
            raw.init_timeout.as_ref(),
            &format!("{field}.init_timeout"),
            base.init_timeout,
            init,
        );
        limits.quarantine_window = self.duration(
            raw.quarantine_window.as_ref(),
            &format!("{field}.quarantine_window"),
            base.quarantine_window,
            Bounds::POSITIVE,
        );
        limits.quarantine_backoff = self.duration(
            raw.quarantine_backoff.as_ref(),
            &format!("{field}.quarantine_backoff"),
            base.quarantine_backoff,
            Bounds::POSITIVE,
        );
        limits.quarantine_max = self.duration(
            raw.quarantine_max.as_ref(),
            &format!("{field}.quarantine_max"),
            base.quarantine_max,
            Bounds::POSITIVE,
        );
        if let Some(n) = &raw.quarantine_after {
            match u32::try_from(*n.get_ref()) {
                Ok(n) => limits.quarantine_after = n,
                Err(_) => self.invalid(
                    n,
                    format!("{field}.quarantine_after"),
                    "must be a whole number, 0 to never quarantine",
                ),
            }
        }
        if let Some(m) = &raw.memory {
            match super::validate::parse_bytes(m.get_ref()) {
                Some(b) if (1 << 16..=4 << 30).contains(&b) => limits.memory_bytes = b,
                _ => self.invalid(
                    m,
                    format!("{field}.memory"),
                    format!(
                        "{:?} is not a size from 64KiB to 4GiB; write it like \"16MiB\"",
                        m.get_ref()
                    ),
                ),
            }
        }
        limits
    }

    /// A plugin's configuration table as the strings `init` receives.
    pub(super) fn plugin_config(
        &mut self,
        table: Option<&Spanned<PluginTable>>,
        field: &str,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, value) in table.map(Spanned::get_ref).into_iter().flatten() {
            let text = match value.get_ref() {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => {
                    self.invalid(
                        value,
                        format!("{field}.{key}"),
                        "must be a string, number or boolean",
                    );
                    continue;
                }
            };
            out.push((key.clone(), text));
        }
        out
    }

    /// Whether a plugin called `name` can be found; reports it if not.
    pub(super) fn known_plugin(
        &mut self,
        name: &Text,
        field: &str,
        plugins: &PluginSettings,
        what: &str,
    ) -> bool {
        if !self.plugin_name(name, field) {
            return false;
        }
        let dir = plugins.dir.as_deref();
        if self.catalog.has_plugin(name.get_ref(), dir) {
            return true;
        }
        let looked = dir.map_or_else(
            || "no plugins directory is configured; add [plugins] dir".to_owned(),
            |d| {
                format!(
                    "there is no file {}",
                    d.join(format!("{}.wasm", name.get_ref())).display()
                )
            },
        );
        let available = self.catalog.names(dir).join(", ");
        self.invalid(
            name,
            field,
            format!(
                "no {what} named {:?}: {looked}; available: {available}",
                name.get_ref()
            ),
        );
        false
    }

    /// A `router` key and its `router_config`, checking the plugin exists.
    pub(super) fn router_use(
        &mut self,
        name: Option<&Text>,
        table: Option<&Spanned<PluginTable>>,
        field: &str,
        plugins: &PluginSettings,
    ) -> Option<RouterUse> {
        let Some(name) = name else {
            if let Some(t) = table {
                self.invalid(
                    t,
                    format!("{field}.router_config"),
                    "is given without a router; add router = \"NAME\" or remove it",
                );
            }
            return None;
        };
        self.known_plugin(name, &format!("{field}.router"), plugins, "router plugin");
        let config = self.plugin_config(table, &format!("{field}.router_config"));
        Some(RouterUse {
            name: name.get_ref().clone(),
            config,
            at: self.at(name.span()),
        })
    }
}
