//! Where a configuration came from, and errors that point into it: `file:line: `key`: what`.

use std::fmt;
use std::ops::Range;

use super::Config;

/// A configuration error: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key concerned, when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A configuration's text and where it came from, for error positions.
#[derive(Debug, Clone)]
pub struct Source {
    /// File name shown in errors.
    pub name: String,
    /// The TOML text.
    pub text: String,
}

impl Source {
    /// Reads `path`, or the embedded default when there is none.
    pub fn load(path: Option<&std::path::Path>) -> Result<Source, String> {
        match path {
            None => Ok(Source {
                name: "<embedded default>".into(),
                text: super::DEFAULT.into(),
            }),
            Some(p) => std::fs::read_to_string(p)
                .map(|text| Source {
                    name: p.display().to_string(),
                    text,
                })
                .map_err(|e| format!("{}: cannot read: {e}", p.display())),
        }
    }

    /// A path named in the file: relative ones are from the file's directory.
    pub fn resolve(&self, path: &str) -> std::path::PathBuf {
        std::path::Path::new(&self.name)
            .parent()
            .unwrap_or(std::path::Path::new(""))
            .join(path)
    }

    /// An error at byte range `span` (from the TOML parser's spans); the line is counted up
    /// to the span's start, and the key is read from that line when not given.
    pub fn error(
        &self,
        span: Range<usize>,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> ConfigError {
        let mut at = span.start.min(self.text.len());
        while !self.text.is_char_boundary(at) {
            at -= 1;
        }
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let key = key.map(str::to_owned).or_else(|| {
            let start = before.rfind('\n').map_or(0, |i| i + 1);
            let line_text = self.text[start..].lines().next().unwrap_or_default();
            line_text
                .split_once('=')
                .map(|(k, _)| k.trim().trim_matches('"').to_owned())
                .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'))
        });
        ConfigError {
            file: self.name.clone(),
            line: Some(line),
            key,
            message: message.into(),
        }
    }

    /// Parses the text; every value is range-checked on the way in.
    pub fn parse(&self) -> Result<Config, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let key = message
                .strip_prefix("unknown field `")
                .and_then(|rest| rest.split('`').next())
                .map(str::to_owned);
            let span = e.span().unwrap_or(0..0);
            self.error(span, key.as_deref(), message)
        })
    }
}
