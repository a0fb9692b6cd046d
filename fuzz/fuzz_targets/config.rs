//! Node configuration files.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mesh::config::parse_file_text("fuzz.toml", text);
    }
});
