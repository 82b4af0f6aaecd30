//! Fuzz target: an SSE stream cut into events as the relay cuts the fuser's, in any frames.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bon_proxy_fuzz::sse_stream(data);
});
