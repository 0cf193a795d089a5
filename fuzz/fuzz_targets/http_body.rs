#![no_main]
//! Fuzz target: see opampd::fuzzing::http_body.

libfuzzer_sys::fuzz_target!(|data: &[u8]| opampd::fuzzing::http_body(data));
