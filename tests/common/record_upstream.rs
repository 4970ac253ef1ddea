//! A deliberately misbehaving upstream for the smuggling tests: it answers every connection's
//! head with fixed bytes, keeps the connection open as a keep-alive server would, and
//! reports what the proxy sent after the head and whether the proxy closed the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// What one upstream connection saw.
#[derive(Debug)]
pub struct Record {
    pub head: Vec<u8>,
    /// Every byte the proxy sent after the request head, while the connection was open.
    pub after: Vec<u8>,
    /// The proxy closed the connection within `wait` of the answer.
    pub closed_by_proxy: bool,
}

/// A recording upstream: answers `answer` after the head, then reads for up to `wait`.
pub struct RecordUpstream {
    pub addr: SocketAddr,
    /// Connections accepted, head or not.
    pub connections: Arc<AtomicUsize>,
    pub records: mpsc::UnboundedReceiver<Record>,
}

pub async fn start(answer: Vec<u8>, wait: Duration) -> RecordUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let (tx, records) = mpsc::unbounded_channel();
    let count = connections.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (tx, answer) = (tx.clone(), answer.clone());
            tokio::spawn(async move {
                let Some((buf, mut after)) = super::raw_upstream::read_head(&mut stream).await
                else {
                    return;
                };
                let _ = stream.write_all(&answer).await;
                let closed_by_proxy = tokio::time::timeout(wait, async {
                    let mut chunk = [0u8; 4096];
                    loop {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => after.extend_from_slice(&chunk[..n]),
                        }
                    }
                })
                .await
                .is_ok();
                let _ = tx.send(Record {
                    head: buf,
                    after,
                    closed_by_proxy,
                });
            });
        }
    });
    RecordUpstream {
        addr,
        connections,
        records,
    }
}

impl RecordUpstream {
    /// The next connection's record, within 10 s.
    pub async fn next(&mut self) -> Record {
        tokio::time::timeout(Duration::from_secs(10), self.records.recv())
            .await
            .expect("an upstream record within 10 s")
            .expect("upstream task alive")
    }
}
