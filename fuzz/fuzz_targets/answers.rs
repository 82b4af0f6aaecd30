//! Fuzz target: upstream answers read as each API reads them, then written back as JSON and SSE.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bon_proxy_fuzz::answer(data);
});
