//! Fuzz target: a request head and body through `plan::read_head` and `plan::with_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bon_proxy_fuzz::plan_input(data);
});
