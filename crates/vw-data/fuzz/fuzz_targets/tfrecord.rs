//! TFRecord framing + tf.train.Example parsing: any bytes must give records or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vw_data::readers::{example, tfrecord};

fuzz_target!(|data: &[u8]| {
    // Framing (CRCs make random records rare, so also feed the raw bytes to the Example parser).
    for record in tfrecord::TfRecordReader::new(data, "fuzz").flatten() {
        let _ = example::parse_example(&record, "fuzz");
    }
    let _ = example::parse_example(data, "fuzz");
});
