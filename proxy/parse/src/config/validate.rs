//! The validation step's shared machinery: where a value is, how each kind of value
//! is checked, and the collected errors and warnings. Each section of the file has its
//! own module (`proxy`, `plugins`, `pools`, `routes`) adding methods to [`Validator`].

use ipnet::IpNet;
use std::net::IpAddr;
use std::ops::{Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

use super::diagnostics::{ConfigError, ConfigWarning, Location, UnknownKey, did_you_mean};
use super::raw::{Text, TextList};
use super::{PluginCatalog, Resolver};

/// Longest duration any setting takes: past it, a value is a mistake (and adding it to
/// an `Instant` could overflow).
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest outlier ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// What a duration setting accepts.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    /// Shortest accepted.
    pub min: Duration,
    /// Longest accepted.
    pub max: Duration,
}

impl Bounds {
    /// More than zero, at most a day: timeouts and intervals.
    pub const POSITIVE: Bounds = Bounds {
        min: Duration::from_millis(1),
        max: MAX_DURATION,
    };
    /// Zero to a day: where zero means "none" or "at once".
    pub const ANY: Bounds = Bounds {
        min: Duration::ZERO,
        max: MAX_DURATION,
    };
}

/// Collects every problem in one file.
pub(super) struct Validator<'a> {
    pub text: &'a str,
    pub file: &'a Path,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<ConfigWarning>,
    /// Keys no raw struct took, to suggest when a required key is missing.
    pub unknown: Vec<UnknownKey>,
    pub catalog: &'a dyn PluginCatalog,
    pub resolver: &'a dyn Resolver,
}

impl Validator<'_> {
    pub fn at(&self, span: Range<usize>) -> Location {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: self.file.to_owned(),
            line,
            column,
        }
    }

    pub fn syntax(&self, e: &toml::de::Error) -> ConfigError {
        ConfigError::Syntax {
            at: self.at(e.span().unwrap_or(0..0)),
            message: e.message().trim().to_owned(),
        }
    }

    pub fn invalid_at(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) {
        self.errors.push(ConfigError::Invalid {
            at: self.at(span),
            field: field.into(),
            problem: problem.into(),
        });
    }

    pub fn invalid<T>(
        &mut self,
        value: &Spanned<T>,
        field: impl Into<String>,
        problem: impl Into<String>,
    ) {
        self.invalid_at(value.span(), field, problem);
    }

    pub fn warn<T>(
        &mut self,
        value: &Spanned<T>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.warnings.push(ConfigWarning {
            at: self.at(value.span()),
            field: field.into(),
            message: message.into(),
        });
    }

    /// A required key: its value, or an error at its table (`table_span`) that names
    /// the missing key and, when an unknown key of that table looks like a misspelling
    /// of it, that key too.
    pub fn required<'v, T>(
        &mut self,
        value: Option<&'v Spanned<T>>,
        table_span: Range<usize>,
        table: &str,
        key: &str,
        example: &str,
    ) -> Option<&'v Spanned<T>> {
        if value.is_some() {
            return value;
        }
        let field = if table.is_empty() {
            key.to_owned()
        } else {
            format!("{table}.{key}")
        };
        let typo = self
            .unknown
            .iter()
            .find(|u| u.parent() == table && did_you_mean(u.name(), &[key]).is_some())
            .map(|u| (u.name().to_owned(), self.at(u.span.clone())));
        let problem = match typo {
            Some((name, at)) => format!(
                "missing; `{name}` at line {} looks like a misspelling of `{key}`",
                at.line
            ),
            None => format!("missing; add {key} = {example}"),
        };
        self.invalid_at(table_span, field, problem);
        None
    }

    /// A duration within `bounds`, or `default` when the key is absent.
    pub fn duration(
        &mut self,
        raw: Option<&Text>,
        field: &str,
        default: Duration,
        bounds: Bounds,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw.get_ref()) {
            Ok(d) if d < bounds.min => {
                self.invalid(
                    raw,
                    field,
                    format!(
                        "{:?} is too short; it must be at least {}",
                        raw.get_ref(),
                        human(bounds.min)
                    ),
                );
                default
            }
            Ok(d) if d > bounds.max => {
                self.invalid(
                    raw,
                    field,
                    format!(
                        "{:?} is too long; it must be at most {}",
                        raw.get_ref(),
                        human(bounds.max)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.invalid(raw, field, format!("{:?} is not a duration ({e}); write a number with a unit, like \"500ms\" or \"2s\"", raw.get_ref()));
                default
            }
        }
    }

    /// A size in bytes, more than zero.
    pub fn bytes(&mut self, raw: Option<&Text>, field: &str, default: u64) -> u64 {
        let Some(raw) = raw else { return default };
        match parse_bytes(raw.get_ref()) {
            Some(n) if n > 0 => n,
            _ => {
                self.invalid(raw, field, format!("{:?} is not a size; write a number of bytes or one with KiB, MiB or GiB, like \"64KiB\"", raw.get_ref()));
                default
            }
        }
    }

    /// A whole number in `range`.
    pub fn number(
        &mut self,
        raw: Option<&Spanned<i64>>,
        field: &str,
        range: RangeInclusive<u32>,
        default: u32,
    ) -> u32 {
        let Some(raw) = raw else { return default };
        match u32::try_from(*raw.get_ref()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                self.invalid(
                    raw,
                    field,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    /// A file path, relative to the configuration file's directory.
    pub fn path(&self, raw: &Text) -> PathBuf {
        let base = self.file.parent().unwrap_or(Path::new("."));
        base.join(raw.get_ref())
    }

    /// CIDR blocks; a bare address means just that address.
    pub fn networks(&mut self, raw: Option<&TextList>, field: &str) -> Vec<IpNet> {
        let Some(raw) = raw else { return Vec::new() };
        let mut out = Vec::new();
        for (i, item) in raw.get_ref().iter().enumerate() {
            let text = item.get_ref().trim();
            let net = text
                .parse::<IpNet>()
                .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(net) => out.push(net),
                Err(_) => self.invalid(
                    item,
                    format!("{field}[{i}]"),
                    format!("{text:?} is not an address or a CIDR block, like \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\""),
                ),
            }
        }
        out
    }

    /// A plugin name: a file stem in the plugins directory, so no path may hide in it.
    pub fn plugin_name(&mut self, raw: &Text, field: &str) -> bool {
        let name = raw.get_ref();
        let valid = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && !name.starts_with('.');
        if !valid {
            self.invalid(raw, field, format!("{name:?} is not a plugin name; use letters, digits, '-', '_' and '.', not starting with '.' (it names <plugins dir>/NAME.wasm)"));
        }
        valid
    }
}

/// `"16MiB"`, `"512KiB"`, `"1GiB"` or a plain number of bytes.
pub(crate) fn parse_bytes(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let scale = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// `"500ms"`, `"30s"`, `"1day"`: for messages.
pub(super) fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
