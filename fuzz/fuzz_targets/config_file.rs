#![no_main]
//! Fuzz target: see opampd::fuzzing::config_file.

libfuzzer_sys::fuzz_target!(|data: &[u8]| opampd::fuzzing::config_file(data));
