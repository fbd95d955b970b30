//! Writes the translated configuration as TOML text, with comments, so that
//! whatever the stunnel file held the output is valid TOML.

use std::fmt::Write;

/// A TOML value of the kinds dctunnel's configuration uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
    List(Vec<String>),
    Bool(bool),
}

/// `key = value`, with comment lines written above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) comments: Vec<String>,
    pub(crate) key: &'static str,
    pub(crate) value: Value,
}

impl Entry {
    pub(crate) fn new(key: &'static str, value: Value) -> Self {
        Entry {
            comments: Vec::new(),
            key,
            value,
        }
    }

    pub(crate) fn commented(mut self, comment: impl Into<String>) -> Self {
        self.comments.push(comment.into());
        self
    }
}

/// A `[[service]]` table.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    /// Comment lines above the table header.
    pub(crate) comments: Vec<String>,
    pub(crate) entries: Vec<Entry>,
    /// Comment lines after the last entry (e.g. a key the user must fill in).
    pub(crate) trailing: Vec<String>,
    /// When set, the whole table is written commented out, this being why.
    pub(crate) disabled: Option<String>,
}

/// Writes `# text` lines, one per line of `text`, with control characters
/// (which TOML forbids in comments) escaped.
pub(crate) fn comment(out: &mut String, prefix: &str, text: &str) {
    for line in text.lines() {
        let clean: String = line
            .chars()
            .flat_map(|c| {
                let escaped: Vec<char> = if c.is_control() && c != '\t' {
                    c.escape_default().collect()
                } else {
                    vec![c]
                };
                escaped
            })
            .collect();
        if clean.is_empty() {
            let _ = writeln!(out, "{prefix}#");
        } else {
            let _ = writeln!(out, "{prefix}# {clean}");
        }
    }
    if text.is_empty() {
        let _ = writeln!(out, "{prefix}#");
    }
}

pub(crate) use crate::config::quote;

fn value(v: &Value) -> String {
    match v {
        Value::Str(s) => quote(s),
        Value::Bool(b) => b.to_string(),
        Value::List(items) => {
            let items: Vec<String> = items.iter().map(|s| quote(s)).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// Writes entries, each under its comments; `prefix` comments the lines out.
pub(crate) fn entries(out: &mut String, prefix: &str, entries: &[Entry]) {
    for entry in entries {
        for c in &entry.comments {
            comment(out, prefix, c);
        }
        let _ = writeln!(out, "{prefix}{} = {}", entry.key, value(&entry.value));
    }
}

/// Writes a `[[service]]` table.
pub(crate) fn service(out: &mut String, table: &Table) {
    for c in &table.comments {
        comment(out, "", c);
    }
    let prefix = match &table.disabled {
        Some(why) => {
            comment(out, "", &format!("NOT ENABLED: {why}"));
            "# "
        }
        None => "",
    };
    let _ = writeln!(out, "{prefix}[[service]]");
    entries(out, prefix, &table.entries);
    for c in &table.trailing {
        comment(out, prefix, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_never_break_the_document() {
        let mut out = String::new();
        comment(&mut out, "", "line one\nline\rtwo\0 ");
        out.push_str("k = 1\n");
        let parsed: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(parsed["k"].as_integer(), Some(1));
        assert_eq!(out.lines().count(), 3, "{out}");
    }

    #[test]
    fn a_disabled_table_is_all_comments() {
        let table = Table {
            comments: vec!["section [x]".into()],
            entries: vec![Entry::new("name", Value::Str("x".into())).commented("why")],
            trailing: vec!["peer_pins = []".into()],
            disabled: Some("duplicate".into()),
        };
        let mut out = String::new();
        service(&mut out, &table);
        assert!(out.lines().all(|l| l.starts_with('#')), "{out}");
    }
}
