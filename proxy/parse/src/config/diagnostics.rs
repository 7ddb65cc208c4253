//! What is wrong with a configuration file, and where: locations, errors, warnings, and
//! unknown keys with the key that was probably meant.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// A position in the configuration file, 1-based.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file.
    pub file: PathBuf,
    /// Line, from 1.
    pub line: usize,
    /// Column in characters, from 1.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// One problem in a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read the configuration: {source}", file = file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML, or a value of the wrong type.
    #[error("{at}: {message}")]
    Syntax {
        /// Where.
        at: Location,
        /// The parser's message.
        message: String,
    },
    /// A key this version does not know (often a typo).
    #[error("{at}: unknown key `{key}`; {hint}")]
    UnknownKey {
        /// Where.
        at: Location,
        /// Full path of the key, like `pools[0].balancr`.
        key: String,
        /// The key probably meant, or the keys allowed there.
        hint: String,
    },
    /// A value that parses but is not acceptable, or a required key that is missing.
    #[error("{at}: {field}: {problem}")]
    Invalid {
        /// Where.
        at: Location,
        /// Full path of the field, like `pools[0].backends[1].addr`.
        field: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "error: {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Something the file allows but probably does not mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where.
    pub at: Location,
    /// Full path of the field.
    pub field: String,
    /// What it does and what to write instead.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "warning: {}: {}: {}", self.at, self.field, self.message)
    }
}

/// A key the raw structs did not take.
#[derive(Clone, Debug)]
pub(super) struct UnknownKey {
    /// Path segments, indices included (`["pools", "0", "balancr"]`).
    pub segments: Vec<String>,
    /// Span of the key in the file.
    pub span: Range<usize>,
}

impl UnknownKey {
    /// The table path without indices (`pools`), as [`super::raw::keys_of`] takes it.
    pub fn parent_kind(&self) -> String {
        self.segments[..self.segments.len().saturating_sub(1)]
            .iter()
            .filter(|s| s.parse::<usize>().is_err())
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The table path with indices (`pools[0]`).
    pub fn parent(&self) -> String {
        display_path(&self.segments[..self.segments.len().saturating_sub(1)])
    }

    /// The key's own name.
    pub fn name(&self) -> &str {
        self.segments.last().map_or("", String::as_str)
    }
}

/// Segments of the key serde_ignored reports.
pub(super) fn path_segments(path: &serde_ignored::Path<'_>) -> Vec<String> {
    fn walk(path: &serde_ignored::Path<'_>, out: &mut Vec<String>) {
        use serde_ignored::Path as P;
        match path {
            P::Root => {}
            P::Seq { parent, index } => {
                walk(parent, out);
                out.push(index.to_string());
            }
            P::Map { parent, key } => {
                walk(parent, out);
                out.push(key.clone());
            }
            P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
                walk(parent, out)
            }
        }
    }
    let mut out = Vec::new();
    walk(path, &mut out);
    // `Spanned<T>` shows up as a map with a `value` key around T.
    out.retain(|s| s != "$__serde_spanned_private_value");
    out
}

/// `pools[0].backends[1].addr` from its segments.
pub(super) fn display_path(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

/// Span of the key at `segments` in the parsed document.
pub(super) fn locate(doc: &Spanned<DeTable<'_>>, segments: &[String]) -> Range<usize> {
    let mut span = doc.span();
    let mut table: Option<&DeTable<'_>> = Some(doc.get_ref());
    let mut array: Option<&[Spanned<DeValue<'_>>]> = None;
    for seg in segments {
        let next = if let Some(t) = table {
            t.iter()
                .find(|(k, _)| k.get_ref().as_ref() == seg.as_str())
                .map(|(k, val)| {
                    span = k.span();
                    val
                })
        } else if let (Some(items), Ok(i)) = (array, seg.parse::<usize>()) {
            items.get(i).inspect(|val| span = val.span())
        } else {
            None
        };
        let Some(value) = next else { break };
        (table, array) = match value.get_ref() {
            DeValue::Table(t) => (Some(t), None),
            DeValue::Array(a) => (None, Some(&a[..])),
            _ => (None, None),
        };
    }
    span
}

/// Levenshtein distance: insertions, deletions and substitutions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate `word` is most likely a misspelling of, as cargo suggests: within an
/// edit distance of a third of its length (at least 1).
pub(super) fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_misspellings_only() {
        let keys = ["balancer", "backends", "name", "retries"];
        assert_eq!(did_you_mean("balancr", &keys), Some("balancer"));
        assert_eq!(did_you_mean("backend", &keys), Some("backends"));
        assert_eq!(did_you_mean("retires", &keys), Some("retries"));
        assert_eq!(did_you_mean("colour", &keys), None);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
