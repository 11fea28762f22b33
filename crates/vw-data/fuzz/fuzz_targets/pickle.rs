//! The minimal unpickler (CALVIN language annotations): any bytes must give a value or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_data::readers::pickle;

fuzz_target!(|data: &[u8]| {
    let _ = pickle::parse_pickle(data, "fuzz");
});
