#![no_main]
//! Fuzz target: see opampd::fuzzing::agent_to_server.

libfuzzer_sys::fuzz_target!(|data: &[u8]| opampd::fuzzing::agent_to_server(data));
