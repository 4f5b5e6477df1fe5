//! clients.xml parsing: the fuzzed file with a fixed valid jobs.toml, through `Config::from_sources` (what `vigil
//! check`, start-up and every reload run). Properties: see `vigil_fuzz::check_config`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server reads the file with read_to_string: only UTF-8 gets this far.
    let Ok(clients) = std::str::from_utf8(data) else { return };
    vigil_fuzz::check_config(clients, vigil_fuzz::JOBS_TOML);
});
