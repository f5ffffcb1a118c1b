//! What arrives on `PREFIX:control`: disconnect and send ops, validated whole. An accepted op
//! round-trips through the JSON a node publishes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::ControlOp;

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = ControlOp::decode(data) {
        let again = ControlOp::decode(&op.to_json()).expect("a node reads what it wrote");
        assert_eq!(again, op);
    }
});
