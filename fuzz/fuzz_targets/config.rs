//! The config loader (`Config::from_toml`) on arbitrary TOML text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        herald_server::fuzzing::config(text);
    }
});
