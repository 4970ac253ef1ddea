use super::*;

fn pattern(text: &str) -> OriginPattern {
    OriginPattern::parse(text).unwrap()
}

#[test]
fn exact_origins_match_scheme_host_and_port() {
    let p = pattern("https://App.Example.com");
    assert!(p.matches(b"https://app.example.com"));
    assert!(p.matches(b"HTTPS://APP.EXAMPLE.COM"));
    for other in [
        &b"http://app.example.com"[..],
        b"https://app.example.com:8443",
        b"https://app.example.com.evil.test",
        b"https://evilapp.example.com",
        b"null",
        b"",
        b"https://",
    ] {
        assert!(!p.matches(other), "{:?}", String::from_utf8_lossy(other));
    }
    let p = pattern("http://127.0.0.1:8080");
    assert!(p.matches(b"http://127.0.0.1:8080"));
    assert!(!p.matches(b"http://127.0.0.1"));
    assert!(pattern("http://[::1]:3000").matches(b"http://[::1]:3000"));
}

#[test]
fn a_wildcard_stands_for_one_label() {
    let p = pattern("https://*.example.com");
    assert!(p.matches(b"https://a.example.com"));
    assert!(p.matches(b"https://A-1.Example.COM"));
    for other in [
        &b"https://example.com"[..],
        b"https://a.b.example.com",
        b"https://.example.com",
        b"https://aexample.com",
        b"http://a.example.com",
        b"https://a.example.com:444",
    ] {
        assert!(!p.matches(other), "{:?}", String::from_utf8_lossy(other));
    }
}

#[test]
fn bad_patterns_are_refused_with_a_reason() {
    let cases = [
        ("app.example.com", "is not an origin"),
        ("ftp://a.example.com", "must start with http:// or https://"),
        ("https://a.example.com/", "without a path"),
        ("https://a.example.com/ws", "without a path"),
        ("https://a.example.com:x", "invalid port"),
        ("https://a.*.example.com", "only as the whole first label"),
        ("https://*", "only as the whole first label"),
        ("https://*.com", "at least two labels"),
        ("https://a..com", "invalid host"),
        ("https://", "invalid host"),
    ];
    for (text, reason) in cases {
        let err = OriginPattern::parse(text).unwrap_err();
        assert!(err.contains(reason), "{text}: {err}");
    }
}

#[test]
fn the_policy_reads_the_origin_header() {
    let patterns = [pattern("https://app.example.com")];
    let h = |value: &'static [u8]| httparse::Header {
        name: "Origin",
        value,
    };
    assert_eq!(allowed(&patterns, false, &[]), Ok(()));
    assert!(
        allowed(&patterns, true, &[])
            .unwrap_err()
            .contains("requires")
    );
    assert_eq!(
        allowed(&patterns, false, &[h(b"https://app.example.com")]),
        Ok(())
    );
    assert!(allowed(&patterns, false, &[h(b"https://evil.test")]).is_err());
    let two = [h(b"https://app.example.com"), h(b"https://app.example.com")];
    assert!(
        allowed(&patterns, false, &two)
            .unwrap_err()
            .contains("more than one")
    );
    assert_eq!(allowed(&[], false, &[h(b"https://any.test")]), Ok(()));
}
