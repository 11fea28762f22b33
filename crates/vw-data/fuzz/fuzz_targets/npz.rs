//! `.npz` archives and `.npy` headers: any bytes must give arrays or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_data::readers::npy;

fuzz_target!(|data: &[u8]| {
    let _ = npy::parse_npz(data, "fuzz");
    if let Ok(arr) = npy::parse_npy(data, "fuzz") {
        let _ = arr.to_f32();
        let _ = arr.to_i64();
    }
});
