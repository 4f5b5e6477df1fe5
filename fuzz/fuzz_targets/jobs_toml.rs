//! jobs.toml parsing: the fuzzed file with a fixed valid clients.xml, through `Config::from_sources`. Properties: see
//! `vigil_fuzz::check_config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server reads the file with read_to_string: only UTF-8 gets this far.
    let Ok(jobs) = std::str::from_utf8(data) else { return };
    vigil_fuzz::check_config(vigil_fuzz::CLIENTS_XML, jobs);
});
