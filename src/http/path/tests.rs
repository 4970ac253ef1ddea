//! The normaliser against RFC 3986's examples and the tricks used to reach a path another
//! route owns; target splitting; the refused paths.

use super::*;

fn normal(path: &str) -> String {
    check(path.as_bytes()).unwrap_or_else(|e| panic!("{path:?} refused: {e}"));
    let mut out = b"kept:".to_vec();
    normalize(path.as_bytes(), &mut out);
    let out = String::from_utf8(out).unwrap();
    out.strip_prefix("kept:")
        .unwrap_or_else(|| panic!("{out:?} lost what was in the buffer"))
        .to_string()
}

#[test]
fn removes_dot_segments_like_rfc_3986_section_5_2_4() {
    assert_eq!(normal("/a/b/c/./../../g"), "/a/g");
    assert_eq!(normal("/a/b/c/./../../g/"), "/a/g/");
}

/// RFC 3986 section 5.4: each relative reference merged with the base path `/b/c/d;p`
/// (section 5.2.3) is the input, the path of the target URI the expected output.
#[test]
fn resolves_rfc_3986_section_5_4_examples() {
    for (merged, expected) in [
        // 5.4.1 normal examples
        ("/b/c/g", "/b/c/g"),
        ("/b/c/./g", "/b/c/g"),
        ("/b/c/g/", "/b/c/g/"),
        ("/g", "/g"),
        ("/b/c/g;x", "/b/c/g;x"),
        ("/b/c/.", "/b/c/"),
        ("/b/c/./", "/b/c/"),
        ("/b/c/..", "/b/"),
        ("/b/c/../", "/b/"),
        ("/b/c/../g", "/b/g"),
        ("/b/c/../..", "/"),
        ("/b/c/../../", "/"),
        ("/b/c/../../g", "/g"),
        // 5.4.2 abnormal examples
        ("/b/c/../../../g", "/g"),
        ("/b/c/../../../../g", "/g"),
        ("/./g", "/g"),
        ("/../g", "/g"),
        ("/b/c/g.", "/b/c/g."),
        ("/b/c/.g", "/b/c/.g"),
        ("/b/c/g..", "/b/c/g.."),
        ("/b/c/..g", "/b/c/..g"),
        ("/b/c/./../g", "/b/g"),
        ("/b/c/./g/.", "/b/c/g/"),
        ("/b/c/g/./h", "/b/c/g/h"),
        ("/b/c/g/../h", "/b/c/h"),
        ("/b/c/g;x=1/./y", "/b/c/g;x=1/y"),
        ("/b/c/g;x=1/../y", "/b/c/y"),
    ] {
        assert_eq!(normal(merged), expected, "{merged}");
    }
}

#[test]
fn escaping_a_route_with_dot_segments_ends_outside_it() {
    assert_eq!(normal("/websocket/../admin"), "/admin");
    assert_eq!(normal("/websocket/./x"), "/websocket/x");
    assert_eq!(normal("/a/b/../../websocket"), "/websocket");
    assert_eq!(normal("/websocket/%2e%2e/admin"), "/admin");
    assert_eq!(normal("/websocket/%2E./admin"), "/admin");
    assert_eq!(normal("/websocket/.%2E"), "/");
    assert_eq!(normal("/websocket/%2e"), "/websocket/");
    assert_eq!(normal("/.."), "/");
    assert_eq!(normal("/."), "/");
}

#[test]
fn decodes_unreserved_and_upper_cases_other_escapes() {
    assert_eq!(normal("/%77ebsocket"), "/websocket");
    assert_eq!(normal("/a%2Db%5Fc%7Ed%2ee%41%7a%30"), "/a-b_c~d.eAz0");
    assert_eq!(normal("/caf%c3%a9"), "/caf%C3%A9");
    assert_eq!(normal("/a%20b%3f%23%25"), "/a%20b%3F%23%25");
    // Decoding happens once: `%252e` is `%2e` as text, not a dot.
    assert_eq!(normal("/ws/%252e%252e/x"), "/ws/%252e%252e/x");
}

#[test]
fn merges_empty_segments() {
    assert_eq!(normal("/"), "/");
    assert_eq!(normal("//websocket"), "/websocket");
    assert_eq!(normal("/a//b///c"), "/a/b/c");
    assert_eq!(normal("/a//"), "/a/");
    assert_eq!(normal("/a//../b"), "/b");
}

#[test]
fn keeps_an_asterisk() {
    let mut out = Vec::new();
    normalize(b"*", &mut out);
    assert_eq!(out, b"*");
}

#[test]
fn normal_form_is_a_fixed_point() {
    for path in [
        "/a/b/c/./../../g",
        "/websocket/%2e%2e/admin",
        "//x//y/..//",
        "/caf%c3%a9/%7e",
        "/b/c/..",
    ] {
        let once = normal(path);
        assert_eq!(normal(&once), once, "{path}");
    }
}

#[test]
fn refuses_separators_upstreams_disagree_on() {
    for (path, reason) in [
        ("/websocket/..%2Fadmin", "encoded slash"),
        ("/websocket%2f..%2fadmin", "encoded slash"),
        ("/a%5Cb", "encoded slash or backslash"),
        ("/a%5cb", "encoded slash or backslash"),
        ("/websocket\\..\\admin", "backslash"),
        ("/a%2", "'%' not followed by two hex digits"),
        ("/a%zz", "'%' not followed by two hex digits"),
        ("/a%", "'%' not followed by two hex digits"),
        ("/websocket/..;/admin", "dot segment with parameters"),
        ("/websocket/.;x/admin", "dot segment with parameters"),
        ("/websocket/%2e%2e;/admin", "dot segment with parameters"),
    ] {
        let err = check(path.as_bytes()).expect_err(path);
        assert!(err.contains(reason), "{path}: {err}");
    }
}

/// nginx refuses `%00` with 400; every other encoded control character goes with it, so
/// no upstream decodes a NUL, CR or LF out of a path wsplice let through.
#[test]
fn refuses_encoded_control_characters() {
    for path in [
        "/a%00",
        "/%00/b",
        "/a%0d%0aX-A:%201",
        "/a%0A",
        "/a%1f",
        "/a%7F",
        "/a%09",
    ] {
        let err = check(path.as_bytes()).expect_err(path);
        assert!(err.contains("encoded control character"), "{path}: {err}");
    }
    assert_eq!(check(b"/a%20%7E%80%FF"), Ok(()));
}

#[test]
fn accepts_what_only_looks_odd() {
    for path in ["/a;b/c", "/g;x=1/../y", "/...", "/a.;b", "/%25", "/a%2C"] {
        assert_eq!(check(path.as_bytes()), Ok(()), "{path}");
    }
}

fn target(t: &str) -> (Option<&str>, &str, &str) {
    let t = Target::parse(t.as_bytes()).unwrap_or_else(|e| panic!("{t:?} refused: {e}"));
    let text = |b: &[u8]| std::str::from_utf8(b).unwrap().to_owned().leak() as &str;
    (t.authority.map(text), text(t.path), text(t.query))
}

#[test]
fn splits_origin_form() {
    assert_eq!(target("/chat"), (None, "/chat", ""));
    assert_eq!(target("/chat?room=1"), (None, "/chat", "?room=1"));
    assert_eq!(target("/chat?"), (None, "/chat", "?"));
    assert_eq!(target("/chat#top"), (None, "/chat", ""));
    assert_eq!(target("/chat?a=1#top"), (None, "/chat", "?a=1"));
    assert_eq!(
        target("/ws?next=/../admin"),
        (None, "/ws", "?next=/../admin")
    );
    assert_eq!(target("/ws?x=%2F\\"), (None, "/ws", "?x=%2F\\"));
    assert_eq!(target("*"), (None, "*", ""));
}

#[test]
fn authority_of_absolute_form_ends_at_slash_question_mark_or_hash() {
    assert_eq!(
        target("http://x/websocket?q"),
        (Some("x"), "/websocket", "?q")
    );
    assert_eq!(
        target("http://x?/websocket"),
        (Some("x"), "", "?/websocket")
    );
    assert_eq!(target("http://x#/websocket"), (Some("x"), "", ""));
    assert_eq!(target("http://x"), (Some("x"), "", ""));
    assert_eq!(
        target("ws://example.com:8080/a/b"),
        (Some("example.com:8080"), "/a/b", "")
    );
    assert_eq!(target("http://[::1]:80/a"), (Some("[::1]:80"), "/a", ""));
}

#[test]
fn refuses_absolute_form_without_a_plain_host() {
    for (t, reason) in [
        ("http:///websocket", "without a valid host"),
        ("http://a b/", "without a valid host"),
        ("http://user@x/websocket", "userinfo"),
        ("http://x:y@x/", "userinfo"),
        ("http://x/a%2fb", "encoded slash"),
        ("http://x\\y/", "without a valid host"),
    ] {
        let err = Target::parse(t.as_bytes()).expect_err(t);
        assert!(err.contains(reason), "{t}: {err}");
    }
}
