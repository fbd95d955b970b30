//! Reads stunnel's configuration syntax the way stunnel 5 does, into a list of
//! `option = value` settings per section, each remembering its file and line.
//!
//! The rules follow stunnel's `options_file()`: a UTF-8 byte order mark is
//! skipped on the first line; each line is trimmed of C whitespace; empty lines
//! and lines starting with `;` or `#` are comments (there are no comments after
//! a value: `accept = 25 ; smtp` is the value `25 ; smtp`); a line that starts
//! with `[` and ends with `]` opens a section, named by everything in between;
//! any other line must contain `=`, the option name is what precedes it
//! (trailing blanks removed) and the value what follows it (leading blanks
//! removed). Settings before the first section are global options and the
//! defaults every section inherits. `include = DIR` reads every regular file of
//! DIR in ascending byte order of the names, as if pasted in place: an included
//! file may continue the current section or open new ones.
//!
//! Parsing knows nothing about what options mean; that is the job of
//! [`super::translate`]. It does no I/O except through an [`IncludeResolver`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How deep `include` directives may nest before parsing gives up. stunnel has
/// no limit and loops forever on a directory that includes itself.
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// How many files all `include` directives together may read.
pub const MAX_INCLUDED_FILES: usize = 1000;

/// Where a setting or section header was written.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The file, as named to [`parse`] or by the [`IncludeResolver`].
    pub file: Arc<str>,
    /// Line number, starting at 1.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One `option = value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The option name as written (stunnel compares names ignoring case).
    pub name: String,
    /// The value as written, blanks around it removed.
    pub value: String,
    /// Where the line is.
    pub origin: Origin,
}

impl Setting {
    /// Whether this setting is the option `name`, ignoring ASCII case as
    /// stunnel does.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// A `[name]` section and the settings written in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Everything between the brackets, untrimmed (stunnel keeps `[ a ]` as
    /// the name ` a `).
    pub name: String,
    /// Where the `[name]` line is.
    pub origin: Origin,
    /// The section's own settings, in file order.
    pub settings: Vec<Setting>,
}

/// An `include = DIR` directive and the files it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// Where the directive is.
    pub origin: Origin,
    /// The directory as written.
    pub dir: String,
    /// The files read, in the order they were read.
    pub files: Vec<String>,
}

/// A parsed stunnel configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StunnelConfig {
    /// The name of the main file, as given to [`parse`].
    pub source: String,
    /// Settings before the first section: global options, and service
    /// options that every section inherits.
    pub global: Vec<Setting>,
    /// The sections in file order.
    pub sections: Vec<Section>,
    /// The `include` directives met, in order.
    pub includes: Vec<Include>,
}

/// A file read by an `include` directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    /// The name used in messages (normally the path).
    pub name: String,
    /// The file's text.
    pub text: String,
}

/// Supplies the files an `include = DIR` directive reads.
pub trait IncludeResolver {
    /// The regular files of `dir`, in the order stunnel reads them: ascending
    /// byte order of their names.
    fn include(&mut self, dir: &str) -> io::Result<Vec<SourceFile>>;
}

/// Refuses every `include`: for parsing text that has no directory around it.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoIncludes;

impl IncludeResolver for NoIncludes {
    fn include(&mut self, _dir: &str) -> io::Result<Vec<SourceFile>> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "includes are not available here",
        ))
    }
}

/// Reads included directories from the file system. A relative directory is
/// taken relative to `base`, normally the directory of the main file (stunnel
/// itself takes it relative to its working directory, `/` under systemd).
#[derive(Debug, Clone)]
pub struct DirIncludes {
    base: PathBuf,
}

impl DirIncludes {
    /// Resolves relative include directories against `base`.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        DirIncludes { base: base.into() }
    }
}

impl IncludeResolver for DirIncludes {
    fn include(&mut self, dir: &str) -> io::Result<Vec<SourceFile>> {
        let dir: PathBuf = self.base.join(Path::new(dir));
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            // stunnel calls stat(), which follows symbolic links, and skips
            // anything that is not a regular file.
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                paths.push((entry.file_name(), path));
            }
        }
        paths.sort_by(|a, b| a.0.as_encoded_bytes().cmp(b.0.as_encoded_bytes()));
        paths
            .into_iter()
            .map(|(_, path)| {
                let bytes = crate::files::read(&path, crate::files::CONFIG_LIMIT).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                Ok(SourceFile {
                    name: path.display().to_string(),
                    text: String::from_utf8_lossy(&bytes).into_owned(),
                })
            })
            .collect()
    }
}

/// Why a stunnel file could not be read. stunnel itself refuses the same files.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A line that is neither a comment, a section header nor `option = value`.
    #[error(
        "{origin}: `{text}`: no '=' found (a line is `option = value`, `[section]` or a comment)"
    )]
    MissingEquals {
        /// Where the line is.
        origin: Origin,
        /// The line, trimmed and shortened.
        text: String,
    },
    /// An `include` directory that could not be read.
    #[error("{origin}: cannot include directory `{dir}`")]
    Include {
        /// Where the directive is.
        origin: Origin,
        /// The directory as written.
        dir: String,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// Includes nested deeper than [`MAX_INCLUDE_DEPTH`].
    #[error("{origin}: includes nested deeper than {MAX_INCLUDE_DEPTH} levels (does a directory include itself?)")]
    IncludeTooDeep {
        /// Where the innermost directive is.
        origin: Origin,
    },
    /// More than [`MAX_INCLUDED_FILES`] included files.
    #[error("{origin}: more than {MAX_INCLUDED_FILES} files included")]
    TooManyIncludes {
        /// Where the directive that went over the limit is.
        origin: Origin,
    },
}

/// Parses the stunnel configuration `text`, named `source` in messages,
/// reading `include` directories through `includes`.
///
/// Never panics, whatever the input.
pub fn parse(
    text: &str,
    source: &str,
    includes: &mut dyn IncludeResolver,
) -> Result<StunnelConfig, ParseError> {
    let mut config = StunnelConfig {
        source: source.to_owned(),
        global: Vec::new(),
        sections: Vec::new(),
        includes: Vec::new(),
    };
    let mut parser = Parser {
        includes,
        config: &mut config,
        files_read: 0,
    };
    parser.file(text, Arc::from(source), 0)?;
    Ok(config)
}

struct Parser<'a> {
    includes: &'a mut dyn IncludeResolver,
    config: &'a mut StunnelConfig,
    files_read: usize,
}

impl Parser<'_> {
    fn file(&mut self, text: &str, file: Arc<str>, depth: usize) -> Result<(), ParseError> {
        for (index, raw) in text.split('\n').enumerate() {
            let origin = Origin {
                file: Arc::clone(&file),
                line: index + 1,
            };
            let raw = if index == 0 {
                raw.strip_prefix('\u{feff}').unwrap_or(raw)
            } else {
                raw
            };
            let line = raw.trim_matches(is_c_space);
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                self.config.sections.push(Section {
                    name: name.to_owned(),
                    origin,
                    settings: Vec::new(),
                });
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(ParseError::MissingEquals {
                    origin,
                    text: shorten(line),
                });
            };
            let name = name.trim_end_matches(is_c_space);
            let value = value.trim_start_matches(is_c_space);
            if name.eq_ignore_ascii_case("include") {
                self.include(value, origin, depth)?;
                continue;
            }
            let setting = Setting {
                name: name.to_owned(),
                value: value.to_owned(),
                origin,
            };
            match self.config.sections.last_mut() {
                Some(section) => section.settings.push(setting),
                None => self.config.global.push(setting),
            }
        }
        Ok(())
    }

    fn include(&mut self, dir: &str, origin: Origin, depth: usize) -> Result<(), ParseError> {
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(ParseError::IncludeTooDeep { origin });
        }
        let files = self
            .includes
            .include(dir)
            .map_err(|source| ParseError::Include {
                origin: origin.clone(),
                dir: dir.to_owned(),
                source,
            })?;
        self.files_read = self.files_read.saturating_add(files.len());
        if self.files_read > MAX_INCLUDED_FILES {
            return Err(ParseError::TooManyIncludes { origin });
        }
        self.config.includes.push(Include {
            origin,
            dir: dir.to_owned(),
            files: files.iter().map(|f| f.name.clone()).collect(),
        });
        for included in files {
            self.file(&included.text, Arc::from(included.name), depth + 1)?;
        }
        Ok(())
    }
}

/// C's `isspace()` in the C locale, which stunnel uses to trim lines.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// The line for an error message, cut to a readable length.
fn shorten(line: &str) -> String {
    const MAX: usize = 80;
    match line.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<String, Vec<SourceFile>>);

    impl IncludeResolver for Map {
        fn include(&mut self, dir: &str) -> io::Result<Vec<SourceFile>> {
            self.0
                .get(dir)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such directory"))
        }
    }

    fn file(name: &str, text: &str) -> SourceFile {
        SourceFile {
            name: name.to_owned(),
            text: text.to_owned(),
        }
    }

    #[test]
    fn reads_globals_sections_and_comments_like_stunnel() {
        let text = "\u{feff}; comment\n# another\n  setuid = stunnel4 \r\n\n[ mongo db ]\n\tACCEPT\t=  27017\r\naccept = 25 ; not a comment\nconnect=a=b\n";
        let config = parse(text, "off.conf", &mut NoIncludes).unwrap();
        assert_eq!(config.global.len(), 1);
        assert_eq!(config.global[0].name, "setuid");
        assert_eq!(config.global[0].value, "stunnel4");
        assert_eq!(config.global[0].origin.line, 3);
        assert_eq!(config.sections.len(), 1);
        let section = &config.sections[0];
        assert_eq!(section.name, " mongo db ");
        assert_eq!(section.origin.to_string(), "off.conf:5");
        let values: Vec<_> = section
            .settings
            .iter()
            .map(|s| (s.name.as_str(), s.value.as_str()))
            .collect();
        assert_eq!(
            values,
            [
                ("ACCEPT", "27017"),
                ("accept", "25 ; not a comment"),
                ("connect", "a=b")
            ]
        );
        assert!(section.settings[0].is("accept"));
    }

    #[test]
    fn a_line_without_equals_is_an_error_with_its_line() {
        let err = parse("[a]\naccept 25\n", "x.conf", &mut NoIncludes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "x.conf:2: `accept 25`: no '=' found (a line is `option = value`, `[section]` or a comment)"
        );
        let err = parse("[unclosed\n", "x.conf", &mut NoIncludes).unwrap_err();
        assert!(matches!(err, ParseError::MissingEquals { .. }));
    }

    #[test]
    fn includes_are_read_in_place_and_may_continue_a_section() {
        let mut dirs = Map(HashMap::from([(
            "/etc/stunnel/conf.d".to_owned(),
            vec![
                file(
                    "/etc/stunnel/conf.d/00-more.conf",
                    "connect = 10.1.0.102:27017\n",
                ),
                file(
                    "/etc/stunnel/conf.d/01-redis.conf",
                    "[redis]\naccept = 6379\n",
                ),
            ],
        )]));
        let text = "pid =\n[mongodb]\naccept = 27017\ninclude = /etc/stunnel/conf.d\n[last]\n";
        let config = parse(text, "main.conf", &mut dirs).unwrap();
        let names: Vec<_> = config.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["mongodb", "redis", "last"]);
        assert_eq!(config.sections[0].settings[1].value, "10.1.0.102:27017");
        assert_eq!(
            config.sections[0].settings[1].origin.to_string(),
            "/etc/stunnel/conf.d/00-more.conf:1"
        );
        assert_eq!(config.includes.len(), 1);
        assert_eq!(config.includes[0].files.len(), 2);
    }

    #[test]
    fn include_errors_name_the_directive() {
        let err = parse("\ninclude = /nowhere\n", "a.conf", &mut NoIncludes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.conf:2: cannot include directory `/nowhere`"
        );
    }

    #[test]
    fn a_directory_including_itself_stops() {
        let mut dirs = Map(HashMap::from([(
            "d".to_owned(),
            vec![file("d/loop.conf", "include = d\n")],
        )]));
        let err = parse("include = d", "a.conf", &mut dirs).unwrap_err();
        assert!(matches!(err, ParseError::IncludeTooDeep { .. }), "{err}");
    }

    #[test]
    fn long_lines_are_shortened_in_errors() {
        let line = "x".repeat(500);
        let err = parse(&line, "a.conf", &mut NoIncludes).unwrap_err();
        assert!(err.to_string().len() < 200);
    }
}
