//! Writes a string as a TOML basic string, for the configuration lines that
//! `import-stunnel` and `certs` print: the one quoter of the crate.

use std::fmt::Write;

/// `s` between double quotes, with `"`, `\` and every control character
/// escaped, so that a TOML parser reads back exactly `s`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoted_strings_survive_a_toml_parser() {
        for s in [
            "plain",
            "a\"b",
            "back\\slash",
            "tab\there",
            "nul\0",
            "del\x7f",
            "c1\u{85}",
            "é✓",
        ] {
            let doc = format!("k = {}", quote(s));
            let parsed: toml::Table = toml::from_str(&doc).unwrap();
            assert_eq!(parsed["k"].as_str(), Some(s), "{doc}");
        }
        assert_eq!(quote("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
