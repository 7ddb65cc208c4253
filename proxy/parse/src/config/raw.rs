//! The file as serde reads it. Every key is optional here, even the required ones: a
//! missing key is reported by validation, beside any unknown key that looks like its
//! typo, rather than stopping serde at the first.
//!
//! The keys each table allows come from these structs ([`keys_of`]), so the "expected
//! one of" hint never drifts from what is parsed.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use std::collections::BTreeMap;
use toml::Spanned;

/// `balancer_config` / `router_config`: scalars by key.
pub(super) type PluginTable = BTreeMap<String, Spanned<toml::Value>>;
/// A string with its place in the file.
pub(super) type Text = Spanned<String>;
/// A list of strings with their places.
pub(super) type TextList = Spanned<Vec<Spanned<String>>>;

#[derive(Deserialize)]
pub(super) struct RawConfig {
    pub proxy: Option<Spanned<RawProxy>>,
    pub plugins: Option<RawPlugins>,
    pub admin: Option<RawAdmin>,
    pub metrics: Option<RawMetrics>,
    pub dns: Option<RawDns>,
    #[serde(default)]
    pub pools: Vec<Spanned<RawPool>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub caches: Vec<Spanned<RawCache>>,
}

#[derive(Deserialize)]
pub(super) struct RawProxy {
    pub listen: Option<TextList>,
    pub threads: Option<Spanned<i64>>,
    pub router: Option<Text>,
    pub router_config: Option<Spanned<PluginTable>>,
    #[serde(default)]
    pub tls: Vec<Spanned<RawTlsListener>>,
    pub redirect_to_https: Option<Spanned<bool>>,
    pub grace_period: Option<Text>,
    pub drain_delay: Option<Text>,
    pub max_header_bytes: Option<Text>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Text>,
    pub client_timeout: Option<Text>,
    pub client_header_timeout: Option<Text>,
    pub keepalive_timeout: Option<Text>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_listener: Option<Spanned<i64>>,
    pub trusted_proxies: Option<TextList>,
    pub access_log: Option<Text>,
    pub access_log_path: Option<Text>,
    pub work_stealing: Option<Spanned<bool>>,
    pub normalize_path: Option<Text>,
    pub encoded_slash: Option<Text>,
}

#[derive(Deserialize)]
pub(super) struct RawTlsListener {
    pub listen: Option<Text>,
    #[serde(default)]
    pub certificates: Vec<Spanned<RawCertificate>>,
    pub http2: Option<bool>,
}

#[derive(Deserialize)]
pub(super) struct RawCertificate {
    pub cert: Option<Text>,
    pub key: Option<Text>,
}

#[derive(Deserialize)]
pub(super) struct RawMetrics {
    pub listen: Option<Text>,
}

#[derive(Deserialize)]
pub(super) struct RawAdmin {
    pub socket: Option<Text>,
    pub state_file: Option<Text>,
}

#[derive(Deserialize)]
pub(super) struct RawPlugins {
    pub dir: Option<Text>,
    pub cache_dir: Option<Text>,
    pub limits: Option<RawLimits>,
}

#[derive(Deserialize)]
pub(super) struct RawLimits {
    pub call_timeout: Option<Text>,
    pub init_timeout: Option<Text>,
    pub memory: Option<Text>,
    pub quarantine_after: Option<Spanned<i64>>,
    pub quarantine_window: Option<Text>,
    pub quarantine_backoff: Option<Text>,
    pub quarantine_max: Option<Text>,
}

#[derive(Deserialize)]
pub(super) struct RawPool {
    pub name: Option<Text>,
    pub balancer: Option<Text>,
    pub balancer_config: Option<Spanned<PluginTable>>,
    pub shadow: Option<Text>,
    pub shadow_config: Option<Spanned<PluginTable>>,
    pub shadow_sample: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub backends: Vec<Spanned<RawBackend>>,
    pub backends_from: Option<Spanned<RawDiscovery>>,
    pub connect_timeout: Option<Text>,
    pub retries: Option<Spanned<i64>>,
    pub on_plugin_failure: Option<Text>,
    pub limits: Option<RawLimits>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub outlier_detection: Option<Spanned<RawOutlier>>,
    pub read_timeout: Option<Text>,
    pub write_timeout: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub retry_on: Option<Spanned<Vec<Spanned<i64>>>>,
    pub retry_budget_percent: Option<Spanned<i64>>,
    pub tls: Option<Spanned<bool>>,
    pub sni: Option<Text>,
    pub tls_verify: Option<Spanned<bool>>,
    pub ca_file: Option<Text>,
    pub protocol: Option<Text>,
}

#[derive(Deserialize)]
pub(super) struct RawBackend {
    pub addr: Option<Text>,
    pub weight: Option<Spanned<i64>>,
    #[serde(default)]
    pub backup: bool,
}

/// `backends_from`: backends found in DNS rather than listed.
#[derive(Deserialize)]
pub(super) struct RawDiscovery {
    pub dns: Option<Text>,
    pub dns_srv: Option<Text>,
    pub interval: Option<Text>,
}

/// `[dns]`: the name servers `backends_from` asks.
#[derive(Deserialize)]
pub(super) struct RawDns {
    pub servers: Option<TextList>,
    pub timeout: Option<Text>,
}

#[derive(Deserialize)]
pub(super) struct RawOutlier {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection: Option<Text>,
    pub max_ejection: Option<Text>,
    pub max_ejected_percent: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
pub(super) struct RawHealthCheck {
    pub kind: Option<Text>,
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub expect_status: Option<Text>,
}

#[derive(Deserialize)]
pub(super) struct RawRoute {
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub pool: Option<Text>,
    pub router: Option<Text>,
    pub router_config: Option<Spanned<PluginTable>>,
    pub allow: Option<TextList>,
    pub deny: Option<TextList>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub cache: Option<Spanned<RawRouteCache>>,
}

/// `[[caches]]`: a response store routes can use.
#[derive(Deserialize)]
pub(super) struct RawCache {
    pub name: Option<Text>,
    pub memory: Option<Text>,
    pub max_object: Option<Text>,
    pub path: Option<Text>,
    pub disk: Option<Text>,
    pub default_ttl: Option<Text>,
    pub lock_timeout: Option<Text>,
    pub x_cache_header: Option<Spanned<bool>>,
}

/// A route's `cache = { use = "pages", … }`.
#[derive(Deserialize)]
pub(super) struct RawRouteCache {
    #[serde(rename = "use")]
    pub cache: Option<Text>,
    pub key: Option<TextList>,
    pub stale_while_revalidate: Option<Text>,
    pub stale_if_error: Option<Text>,
    pub store_set_cookie: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
pub(super) struct RawRateLimit {
    pub per_second: Option<Spanned<i64>>,
    pub burst: Option<Spanned<i64>>,
    pub ipv6_prefix: Option<Spanned<i64>>,
}

/// The keys of the table at `parent` (its path without indices, like
/// `pools.health_check`), read from the raw struct that parses it.
pub(super) fn keys_of(parent: &str) -> Option<&'static [&'static str]> {
    Some(match parent {
        "" => field_names::<RawConfig>(),
        "proxy" => field_names::<RawProxy>(),
        "proxy.tls" => field_names::<RawTlsListener>(),
        "proxy.tls.certificates" => field_names::<RawCertificate>(),
        "metrics" => field_names::<RawMetrics>(),
        "admin" => field_names::<RawAdmin>(),
        "plugins" => field_names::<RawPlugins>(),
        "plugins.limits" | "pools.limits" => field_names::<RawLimits>(),
        "pools" => field_names::<RawPool>(),
        "pools.backends" => field_names::<RawBackend>(),
        "pools.backends_from" => field_names::<RawDiscovery>(),
        "dns" => field_names::<RawDns>(),
        "pools.health_check" => field_names::<RawHealthCheck>(),
        "pools.outlier_detection" => field_names::<RawOutlier>(),
        "routes" => field_names::<RawRoute>(),
        "routes.rate_limit" => field_names::<RawRateLimit>(),
        "routes.cache" => field_names::<RawRouteCache>(),
        "caches" => field_names::<RawCache>(),
        _ => return None,
    })
}

/// The field names serde's derive gives `T` (what it passes to `deserialize_struct`).
fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut names));
    names
}

/// A deserializer that only records the field list it is asked for.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldNames<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("field names only"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("field names only"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::keys_of;

    #[test]
    fn key_lists_come_from_the_structs() {
        let pools = keys_of("pools").unwrap_or_default();
        assert!(pools.contains(&"balancer") && pools.contains(&"health_check"));
        assert_eq!(
            keys_of("pools.backends"),
            Some(&["addr", "weight", "backup"][..])
        );
        assert_eq!(keys_of("nowhere"), None);
    }
}
