//! Raw tunnels through the proxy: the upgrade head sent by hand and exactly the `101` head
//! read back, so the bytes after it are the tunnel's own.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Opens a tunnel to `proxy`.
pub async fn open(proxy: SocketAddr) -> TcpStream {
    connect(proxy, TcpSocket::new_v4().unwrap()).await
}

/// Opens a tunnel to `proxy` from a client that takes little before the proxy's sends to
/// it block: a small SO_RCVBUF and a small MSS, set before connecting so that its SYN
/// already advertises them (the MSS also keeps the proxy's send buffer towards it small,
/// as the kernel sizes that by segments).
pub async fn open_narrow(proxy: SocketAddr, receive_buffer: usize, mss: u32) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(receive_buffer).unwrap();
    socket.set_tcp_mss(mss).unwrap();
    socket.set_nonblocking(true).unwrap();
    let socket = TcpSocket::from_std_stream(socket.into());
    connect(proxy, socket).await
}

async fn connect(proxy: SocketAddr, socket: TcpSocket) -> TcpStream {
    let mut stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(proxy))
        .await
        .expect("connected within 10 s")
        .unwrap();
    upgrade(&mut stream, "test").await;
    stream
}

/// Sends the upgrade request for `/tunnel` with `Host: host` on `stream` and reads exactly
/// the `101` head back, so the bytes after it are the tunnel's own.
pub async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, host: &str) {
    let request = super::upgrade_request("/tunnel").replace("Host: test", &format!("Host: {host}"));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("101 within 10 s")
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before 101: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
}
