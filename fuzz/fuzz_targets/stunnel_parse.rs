//! Fuzzes `dctunnel::stunnel::parse` and `translate`: no input may panic, and
//! whatever parses must translate into valid TOML.
#![no_main]

use std::io;

use dctunnel::stunnel::{self, IncludeResolver, SourceFile};
use libfuzzer_sys::fuzz_target;

/// Serves the fuzz input itself for every included directory, so that
/// includes (and include loops) are fuzzed too.
struct SelfInclude<'a>(&'a str);

impl IncludeResolver for SelfInclude<'_> {
    fn include(&mut self, dir: &str) -> io::Result<Vec<SourceFile>> {
        if dir.len() % 2 == 1 {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such directory"));
        }
        Ok(vec![SourceFile {
            name: format!("{dir}/00.conf"),
            text: self.0.to_owned(),
        }])
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = stunnel::parse(&text, "fuzz.conf", &mut SelfInclude(&text)) {
        let translation = stunnel::translate(&config);
        if let Err(e) = toml::from_str::<toml::Table>(&translation.toml) {
            panic!("translation is not TOML: {e}\n{}", translation.toml);
        }
    }
});
