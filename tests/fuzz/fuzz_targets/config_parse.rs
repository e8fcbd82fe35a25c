//! Configuration text → `Config::parse`: every input must give `Ok` or `Err`, never a panic or a
//! hang (libFuzzer's `-timeout` makes a slow input a finding).
#![no_main]

use std::path::Path;

use evalstream::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // YAML is text: bytes that are not UTF-8 never reach the parser (`Config::load` reads a
    // `String`).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `rhai` scripts and `json_schema` schema files are read from the paths the configuration
    // names; reading a device (`/dev/zero`, `/dev/stdin`) would block or grow without bound, which
    // is the file's fault, not the parser's.
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let _ = std::hint::black_box(Config::parse(text, Path::new("fuzz.yaml"), &|_| {
        Some("x".into())
    }));
});
