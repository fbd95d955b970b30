//! What loading reports: each problem names the file, where in it (a
//! service or a table), the key and what is wrong.

use std::fmt;
use std::path::PathBuf;

/// Where in the file a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The file as a whole: its syntax, its top-level keys.
    File,
    /// A `[[service]]`, by name, or by position (`#2`) while it has none.
    Service(String),
    /// A table of settings, such as `daemon` for `[daemon]`.
    Table(&'static str),
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub location: Location,
    /// The key to fix, if the problem is about one.
    pub field: Option<String>,
    pub message: String,
}

/// `FILE: service "NAME": KEY: MESSAGE`, `FILE: [TABLE].KEY: MESSAGE`,
/// `FILE: KEY: MESSAGE`, leaving out what the problem does not name.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        match (&self.location, &self.field) {
            (Location::File, None) => {}
            (Location::File, Some(field)) => write!(f, ": {field}")?,
            (Location::Service(service), None) => write!(f, ": service {service:?}")?,
            (Location::Service(service), Some(field)) => {
                write!(f, ": service {service:?}: {field}")?
            }
            (Location::Table(table), None) => write!(f, ": [{table}]")?,
            (Location::Table(table), Some(field)) => write!(f, ": [{table}].{field}")?,
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
