//! Virtual hosts through the real binary on a plain listener: routes that name a `host` are
//! chosen by the request's Host (port dropped, any case), exact names before wildcards
//! before routes for any host; a Host no route takes is answered 404.

mod common;

use std::time::Duration;

use common::{Proxy, raw_exchange, record_upstream, status_of, upstreams};

fn answer(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Routes (host, path) -> upstream i, each upstream answering its own name as the body.
async fn start(
    routes: &[(Option<&str>, &str, &str)],
) -> (Proxy, Vec<record_upstream::RecordUpstream>) {
    let mut config =
        String::from("listen = [\"127.0.0.1:0\"]\nworkers = 1\nupstreams = \"upstreams.toml\"\n");
    let mut files = String::new();
    let mut ups = Vec::new();
    for (host, path, name) in routes {
        config += "\n[[route]]\n";
        if let Some(host) = host {
            config += &format!("host = \"{host}\"\n");
        }
        config += &format!("path = \"{path}\"\nupstream = \"{name}\"\n");
        if !files.contains(&format!("[{name}]")) {
            let up = record_upstream::start(answer(name), Duration::from_millis(50)).await;
            files += &upstreams(name, &[up.addr]);
            ups.push(up);
        }
    }
    (Proxy::start_raw(&config, &files), ups)
}

/// The body of the answer to `GET path` with `Host: host`, or the status when not 200.
async fn get(proxy: &Proxy, host: &str, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let response = raw_exchange(proxy.addr, request.as_bytes()).await;
    match status_of(&response) {
        200 => {
            let text = String::from_utf8_lossy(&response).into_owned();
            text.split("\r\n\r\n")
                .nth(1)
                .unwrap_or_default()
                .to_string()
        }
        status => status.to_string(),
    }
}

#[tokio::test]
async fn the_host_header_picks_the_route() {
    let (proxy, _ups) = start(&[
        (Some("chat.example.com"), "/ws", "chat"),
        (Some("news.example.com"), "/ws", "news"),
        (Some("*.example.com"), "/ws", "wild"),
        (None, "/ws/any", "any"),
    ])
    .await;
    assert_eq!(get(&proxy, "chat.example.com", "/ws").await, "chat");
    assert_eq!(get(&proxy, "news.example.com:8080", "/ws").await, "news");
    assert_eq!(get(&proxy, "NEWS.Example.COM", "/ws").await, "news");
    assert_eq!(get(&proxy, "other.example.com", "/ws").await, "wild");
    // The most specific host wins over a longer path for any host.
    assert_eq!(get(&proxy, "chat.example.com", "/ws/any").await, "chat");
    assert_eq!(get(&proxy, "example.org", "/ws/any").await, "any");
    // One label only under the wildcard, and nothing else routes these.
    assert_eq!(get(&proxy, "a.b.example.com", "/ws").await, "404");
    assert_eq!(get(&proxy, "example.com", "/ws").await, "404");
    assert_eq!(get(&proxy, "example.org", "/ws").await, "404");
}

#[tokio::test]
async fn an_absolute_form_target_routes_on_its_authority() {
    let (proxy, _ups) = start(&[(Some("chat.example.com"), "/", "chat"), (None, "/", "any")]).await;
    let request = b"GET http://chat.example.com:80/x HTTP/1.1\r\nHost: other.org\r\nConnection: close\r\n\r\n";
    let response = raw_exchange(proxy.addr, request).await;
    assert!(String::from_utf8_lossy(&response).ends_with("chat"));
    assert_eq!(get(&proxy, "other.org", "/x").await, "any");
}
