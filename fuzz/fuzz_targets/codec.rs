//! Link frames as a peer's endpoint receives them (the codec underneath).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = mesh::wire::decode(data);
});
