//! Any bytes sent as an admin-socket request line: a request or an error message,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_parse::admin_protocol::parse_request;

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(&String::from_utf8_lossy(data));
});
