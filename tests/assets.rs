//! `dctunnel generate-assets`, as scripts/build-deb.sh runs it: the man pages
//! and completions the Debian package installs.

use std::fs;
use std::process::Command;

#[test]
fn writes_section_8_pages_for_every_visible_command_and_completions_without_the_hidden_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("assets");
    let run = Command::new(env!("CARGO_BIN_EXE_dctunnel"))
        .arg("generate-assets")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run dctunnel");
    assert!(
        run.status.success(),
        "generate-assets failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    let page = fs::read_to_string(out.join("dctunnel.8")).expect("dctunnel.8");
    assert!(page.contains(".TH dctunnel 8 "), "not section 8:\n{page}");
    // Every page the top page points to exists.
    let mut pointed = 0;
    for line in page.lines() {
        // roff writes `dctunnel\-run(8)`.
        if let Some(name) = line.strip_suffix("(8)") {
            let name = name.replace("\\-", "-");
            assert!(out.join(format!("{name}.8")).is_file(), "{name}.8 missing");
            pointed += 1;
        }
    }
    assert_eq!(
        pointed, 6,
        "run, reload, check, certs, import-stunnel, status:\n{page}"
    );
    assert!(out.join("dctunnel-certs-issue.8").is_file());

    for name in ["dctunnel.bash", "_dctunnel"] {
        let text = fs::read_to_string(out.join("completions").join(name)).expect(name);
        assert!(
            text.contains("import-stunnel"),
            "{name} lacks import-stunnel"
        );
        assert!(
            !text.contains("generate-assets"),
            "{name} offers the hidden command"
        );
    }
    let names: Vec<_> = fs::read_dir(&out)
        .expect("read assets")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.to_string_lossy().contains("generate")),
        "a page for the hidden command: {names:?}"
    );
}
