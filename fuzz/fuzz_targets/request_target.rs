//! Any bytes as the path of a request target: canonicalising never panics, never turns
//! an encoded slash into a separator, and its forward form (what a backend may be sent)
//! canonicalises to the same matching path, so a path matched under a route prefix is
//! matched by what the backend receives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_parse::request::{EncodedSlash, canonical_host, check_properties};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for slash in [EncodedSlash::Reject, EncodedSlash::Keep] {
        if let Err(broken) = check_properties(text, slash) {
            panic!("{broken}");
        }
    }
    // A canonical host is its own canonical form.
    if let Ok(host) = canonical_host(text)
        && !text.trim_start().starts_with('[')
    {
        assert_eq!(canonical_host(&host).as_deref(), Ok(host.as_str()), "{text:?}");
    }
});
