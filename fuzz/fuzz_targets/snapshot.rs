//! Snapshot manifests, index objects and data entries, as restore reads
//! them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mesh::snapshot::parse_manifest("fuzz/manifest.json", "fuzz", data);
    let _ = mesh::snapshot::decode_index("fuzz/index.bin", data);
    let _ = mesh::snapshot::decode_data_entry("fuzz/data-0.bin", data);
});
