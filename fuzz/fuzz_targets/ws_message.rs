#![no_main]
//! Fuzz target: see opampd::fuzzing::ws_message.

libfuzzer_sys::fuzz_target!(|data: &[u8]| opampd::fuzzing::ws_message(data));
