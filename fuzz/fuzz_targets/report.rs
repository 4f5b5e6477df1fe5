//! Report validation: any bytes that decode as a `Report` are validated, which must never panic; a report that passes
//! must survive re-encoding and still pass (what the agent spools is what the server checks).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_schema::report::Report;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = serde_json::from_slice::<Report>(data) else { return };
    if report.validate().is_err() {
        return;
    }
    let json = serde_json::to_vec(&report).expect("a valid report encodes");
    let back: Report = serde_json::from_slice(&json).expect("an encoded valid report decodes");
    vigil_fuzz::assert_reencoded(&report, &back);
    back.validate().expect("a valid report stays valid after re-encoding");
});
