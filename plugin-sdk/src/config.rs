//! The pool's `balancer_config`, as handed to `init`.

use std::time::Duration;

/// Key/value settings from the pool's `balancer_config` table. Values arrive as text
/// (numbers and booleans in their TOML spelling); the getters parse them and return
/// errors that name the key, ready to return from [`crate::Balancer::init`].
#[derive(Clone, Debug, Default)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Wraps the raw pairs.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }

    /// Raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` parsed as `T`, or `default` when absent.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| format!("balancer_config.{key} = {raw:?}: {e}")),
        }
    }

    /// `key` as a duration with a unit (`"500ms"`, `"10s"`), or `default` when absent.
    pub fn duration_or(&self, key: &str, default: Duration) -> Result<Duration, String> {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => humantime::parse_duration(raw).map_err(|e| {
                format!("balancer_config.{key} = {raw:?}: {e}; write a number with a unit, like \"500ms\" or \"10s\"")
            }),
        }
    }

    /// Fails naming the first key not in `known`, so typos do not pass silently.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), String> {
        match self
            .entries
            .iter()
            .find(|(k, _)| !known.contains(&k.as_str()))
        {
            None => Ok(()),
            Some((k, _)) => Err(format!(
                "unknown balancer_config key `{k}`; this balancer accepts: {}",
                if known.is_empty() {
                    "no keys".to_owned()
                } else {
                    known.join(", ")
                }
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn parses_durations_and_names_the_key_on_error() {
        let c = config(&[("decay", "250ms"), ("bad", "soon")]);
        assert_eq!(
            c.duration_or("decay", Duration::ZERO),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            c.duration_or("absent", Duration::from_secs(1)),
            Ok(Duration::from_secs(1))
        );
        let err = c.duration_or("bad", Duration::ZERO).unwrap_err();
        assert!(err.starts_with("balancer_config.bad = \"soon\""), "{err}");
    }

    #[test]
    fn rejects_unknown_keys_by_name() {
        let err = config(&[("choises", "2")])
            .reject_unknown(&["choices"])
            .unwrap_err();
        assert!(
            err.contains("`choises`") && err.contains("choices"),
            "{err}"
        );
    }
}
