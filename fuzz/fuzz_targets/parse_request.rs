//! Fuzz target: a request body through `ChatRequest::parse` and every API's view.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bon_proxy_fuzz::request(data);
});
