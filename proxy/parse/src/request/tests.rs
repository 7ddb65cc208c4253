//! Unit tests of the canonical request view.
use super::*;

fn matching(raw: &str) -> String {
    normalize_path(raw, EncodedSlash::Reject).unwrap().matching
}

#[test]
fn every_spelling_of_a_path_matches_as_one() {
    for spelling in [
        "/secure",
        "//secure",
        "/%73ecure",
        "/%73%65cure",
        "/./secure",
        "/x/../secure",
        "/x/%2e%2e/secure",
        "/../secure",
        "///./x/y/../../secure",
    ] {
        assert_eq!(matching(spelling), "/secure", "{spelling}");
    }
    assert_eq!(matching("/secure/"), "/secure/");
    assert_eq!(matching("/secure/."), "/secure/");
    assert_eq!(matching("/a/b/.."), "/a/");
    assert_eq!(matching("/"), "/");
    assert_eq!(matching("/.."), "/");
    assert_eq!(matching("/a%20b"), "/a b");
}

#[test]
fn an_encoded_slash_never_becomes_a_separator() {
    assert_eq!(
        normalize_path("/%2fsecure", EncodedSlash::Reject),
        Err(TargetError::EncodedSlash)
    );
    let kept = normalize_path("/%2fsecure/..%2F..", EncodedSlash::Keep).unwrap();
    assert_eq!(kept.matching, "/%2Fsecure/..%2F..");
    assert!(!under_prefix(&kept.matching, "/secure"));
}

#[test]
fn the_forward_form_decodes_only_unreserved_characters() {
    let p = normalize_path("/a/%7euser/%3A%3a:x/./b c/%e2%82%ac", EncodedSlash::Reject).unwrap();
    assert_eq!(p.forward, "/a/~user/%3A%3A:x/b%20c/%E2%82%AC");
    assert_eq!(p.matching, "/a/~user/:::x/b c/€");
    // The forward form is its own canonical form.
    assert_eq!(normalize_path(&p.forward, EncodedSlash::Reject).unwrap(), p);
}

#[test]
fn malformed_paths_are_refused() {
    for (raw, e) in [
        ("/a%2", TargetError::BadEscape),
        ("/a%zz", TargetError::BadEscape),
        ("/a%00", TargetError::EncodedNul),
        ("a/b", TargetError::NotAbsolutePath),
    ] {
        assert_eq!(normalize_path(raw, EncodedSlash::Keep), Err(e), "{raw}");
    }
    assert_eq!(matching("/%ff%fe"), "/%FF%FE");
}

#[test]
fn random_paths_keep_the_canonical_properties() {
    // The fuzz target's properties over paths built from the pieces that matter
    // (a small xorshift, so the run is the same every time).
    const PIECES: [&str; 16] = [
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E%2e",
        "%2f",
        "%2F",
        "%25",
        "%73",
        "a",
        "%",
        "%zz",
        "%e2%82%ac",
        "%ff",
        "~",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..20_000 {
        let mut raw = String::from("/");
        for _ in 0..(state % 9) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            raw.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
        }
        state = state.wrapping_add(1);
        for slash in [EncodedSlash::Reject, EncodedSlash::Keep] {
            if let Err(e) = check_properties(&raw, slash) {
                panic!("{e}");
            }
        }
    }
}

#[test]
fn hosts_lose_case_port_and_trailing_dot() {
    assert_eq!(
        canonical_host("Admin.Example.com.").unwrap(),
        "admin.example.com"
    );
    assert_eq!(
        canonical_host("admin.example.com:8080").unwrap(),
        "admin.example.com"
    );
    assert_eq!(canonical_host("[::1]:80").unwrap(), "::1");
    assert_eq!(canonical_host("10.0.0.1").unwrap(), "10.0.0.1");
    assert_eq!(canonical_host("").unwrap(), "");
    for bad in ["a b", "a/b", "a..b", ".a", "a:x", "[zz]", "a@b"] {
        assert!(canonical_host(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_host_comes_from_the_target_or_the_header_and_they_must_agree() {
    assert_eq!(
        request_host(&[], Some("Admin.example.com"), true).unwrap(),
        "admin.example.com"
    );
    assert_eq!(
        request_host(&["a.example"], None, true).unwrap(),
        "a.example"
    );
    assert_eq!(
        request_host(&["a.example:80"], Some("a.example"), true).unwrap(),
        "a.example"
    );
    assert!(matches!(
        request_host(&["a.example"], Some("admin.example"), true),
        Err(TargetError::HostMismatch { .. })
    ));
    assert_eq!(request_host(&[], None, true), Err(TargetError::MissingHost));
    assert_eq!(request_host(&[], None, false).unwrap(), "");
    assert_eq!(
        request_host(&["a", "b"], None, true),
        Err(TargetError::DuplicateHost)
    );
}

#[test]
fn the_quick_check_for_canonical_paths_agrees_with_the_long_way() {
    // Every path of up to four segments drawn from these pieces, with and without a
    // trailing slash: wherever the quick check says "canonical", the long way must give
    // the path back unchanged in both forms.
    let pieces = [
        "", ".", "..", "a", "b.c", "%41", "a b", "~x", "é", "a:b@c", "..a", "%2F",
    ];
    let mut quick = 0;
    let mut paths = vec![String::new()];
    for _ in 0..4 {
        let longer: Vec<String> = paths
            .iter()
            .flat_map(|p| pieces.iter().map(move |s| format!("{p}/{s}")))
            .collect();
        paths.extend(longer);
    }
    for raw in paths.iter().chain([&"a/b".to_owned(), &"/".to_owned()]) {
        let long = normalize_by_segments(raw, EncodedSlash::Keep);
        if is_canonical(raw) {
            quick += 1;
            let same = NormalPath {
                matching: raw.clone(),
                forward: raw.clone(),
            };
            assert_eq!(long, Ok(same), "{raw:?}");
        }
        assert_eq!(normalize_path(raw, EncodedSlash::Keep), long, "{raw:?}");
    }
    assert!(quick > 1_000, "the quick check took only {quick} paths");
}

#[test]
fn the_quick_check_for_canonical_hosts_agrees_with_the_long_way() {
    let pieces = [
        "", ".", "a", "B", "0", "-", "_x", "~", ":80", " ", "[::1]", "é",
    ];
    let mut quick = 0;
    for a in pieces {
        for b in pieces {
            for c in pieces {
                let raw = format!("{a}{b}{c}");
                let long = canonical_host_by_parts(&raw);
                if is_plain_host(&raw) {
                    quick += 1;
                    assert_eq!(long.as_deref(), Ok(raw.as_str()), "{raw:?}");
                }
                assert_eq!(canonical_host(&raw), long, "{raw:?}");
            }
        }
    }
    assert!(quick > 100, "the quick check took only {quick} hosts");
}
