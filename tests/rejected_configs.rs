//! Every file in `config/rejected/` must fail to load (config parse, then record compile) with
//! a message containing the text of its first line, `# expect: <text>`.

use std::path::Path;

use dnsteer::config::Config;
use dnsteer::steer::records;

#[test]
fn every_rejected_config_fails_with_its_expected_message() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rejected");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("config/rejected exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "only {} rejected configs", files.len());

    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).expect("readable file");
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{}: first line must be '# expect: …'", path.display()));
        assert!(!expect.is_empty(), "{}: empty expectation", path.display());
        let result = Config::parse(&text, path).and_then(|c| records::compile(&c).map(|_| ()));
        match result {
            Ok(()) => failures.push(format!("{}: accepted", path.display())),
            Err(e) if !e.to_string().contains(expect) => {
                failures.push(format!("{}: expected '{expect}' in: {e}", path.display()));
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
