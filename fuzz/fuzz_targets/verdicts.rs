//! Fuzz target: judge answers through every strategy's verdict parsing, and the local judges.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bon_proxy_fuzz::verdicts(data);
    bon_proxy_fuzz::local_judges(data);
});
