//! Fuzz target: `proxy.toml` text through `Config::parse`, and a written config read back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bon_proxy_fuzz::config(data);
});
