//! Any bytes as the first flight of a TLS connection: `hello::server_name` never panics, and
//! a name it reads is lower-case ASCII that the bytes hold (in some case).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsplice::tls::hello::server_name;

fuzz_target!(|data: &[u8]| {
    let mut out = [0u8; 255];
    if let Some(name) = server_name(data, &mut out) {
        assert!(!name.is_empty() && name.len() <= 255);
        assert!(name.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()));
        let lower: Vec<u8> = data.iter().map(u8::to_ascii_lowercase).collect();
        assert!(lower.windows(name.len()).any(|w| w == name.as_bytes()));
    }
});
