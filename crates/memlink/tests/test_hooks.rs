//! The test-only hooks (every `__`-prefixed public function) are not part of the public API of
//! a normal build: each must be compiled only with the `fault-injection` feature, which
//! memlink's own tests enable and a normal build does not. Checked on the sources, since this
//! test binary itself is built with the feature.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_double_underscore_hook_is_behind_the_fault_injection_feature() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut hooks = 0;
    let mut exposed = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            if !(code.starts_with("pub fn __") || code.starts_with("pub(crate) fn __")) {
                continue;
            }
            hooks += 1;
            // The attributes right above the function (doc comments and other attributes in
            // between are fine).
            let gated = lines[..at]
                .iter()
                .rev()
                .map(|l| l.trim_start())
                .take_while(|l| l.starts_with("#[") || l.starts_with("///"))
                .any(|l| l == "#[cfg(feature = \"fault-injection\")]");
            if !gated {
                exposed.push(format!("{}:{}: {code}", file.display(), at + 1));
            }
        }
    }
    assert!(hooks >= 10, "found only {hooks} hooks: is the scan broken?");
    assert!(
        exposed.is_empty(),
        "test hooks in the public API of a normal build:\n{}",
        exposed.join("\n")
    );
}
