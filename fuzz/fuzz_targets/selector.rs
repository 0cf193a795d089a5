#![no_main]
//! Fuzz target: see opampd::fuzzing::selector.

libfuzzer_sys::fuzz_target!(|data: &[u8]| opampd::fuzzing::selector(data));
