//! Envelope opening: `peek` and `open` under a fixed key, on the bytes as received and on the same bytes carrying a
//! valid tag (so decryption and the padding check are reached too). Properties: see `vigil_fuzz::check_open`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_schema::envelope::{MAX_SEALED, TAG_LEN};

fuzz_target!(|data: &[u8]| {
    vigil_fuzz::check_open(data);
    if data.len() + TAG_LEN <= MAX_SEALED {
        vigil_fuzz::check_open(&vigil_fuzz::with_valid_tag(data));
    }
});
