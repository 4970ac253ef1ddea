//! The server name a client asked for, read from its ClientHello before rustls sees it:
//! rustls's unbuffered server connection does not expose SNI, and a request whose `Host`
//! its certificate was not chosen for is answered `421`.

/// The SNI host name in the ClientHello at the start of `bytes` (one TLS record), if the
/// record is complete and names one. ASCII lower-cased into `out`, which it returns.
pub fn server_name<'o>(bytes: &[u8], out: &'o mut [u8; 255]) -> Option<&'o str> {
    let mut r = Reader(bytes);
    // Record header: handshake, version, length.
    if r.u8()? != 22 {
        return None;
    }
    r.skip(2)?;
    let len = r.u16()? as usize;
    let mut r = Reader(r.take(len)?);
    // Handshake header: client_hello, 24-bit length.
    if r.u8()? != 1 {
        return None;
    }
    let len = (r.u8()? as usize) << 16 | r.u16()? as usize;
    let mut r = Reader(r.take(len)?);
    r.skip(2 + 32)?; // client_version, random
    let n = r.u8()? as usize;
    r.skip(n)?; // session id
    let n = r.u16()? as usize;
    r.skip(n)?; // cipher suites
    let n = r.u8()? as usize;
    r.skip(n)?; // compression methods
    let n = r.u16()? as usize;
    let mut extensions = Reader(r.take(n)?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let n = extensions.u16()? as usize;
        let mut body = Reader(extensions.take(n)?);
        if kind != 0 {
            continue;
        }
        let n = body.u16()? as usize;
        let mut list = Reader(body.take(n)?);
        while !list.0.is_empty() {
            let name_type = list.u8()?;
            let n = list.u16()? as usize;
            let name = list.take(n)?;
            if name_type == 0 && !name.is_empty() && name.len() <= out.len() && name.is_ascii() {
                for (o, b) in out.iter_mut().zip(name) {
                    *o = b.to_ascii_lowercase();
                }
                return std::str::from_utf8(&out[..name.len()]).ok();
            }
        }
        return None;
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(drop)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::ClientConfig;
    use rustls::client::ClientConnection;
    use rustls::pki_types::ServerName;

    use super::*;

    /// The first flight of a real rustls client asking for `name`.
    fn client_hello(name: &str, sni: bool) -> Vec<u8> {
        let mut config = ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.enable_sni = sni;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut client = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn reads_the_name_of_a_real_client_hello_lower_cased() {
        let hello = client_hello("Chat.Example.COM", true);
        let mut out = [0u8; 255];
        assert_eq!(server_name(&hello, &mut out), Some("chat.example.com"));
    }

    #[test]
    fn no_name_without_sni_or_before_the_record_is_whole() {
        let mut out = [0u8; 255];
        assert_eq!(server_name(&client_hello("a.test", false), &mut out), None);
        let hello = client_hello("a.test", true);
        for cut in 0..hello.len() {
            assert_eq!(server_name(&hello[..cut], &mut out), None, "cut at {cut}");
        }
    }

    #[test]
    fn anything_but_a_client_hello_has_no_name() {
        let mut out = [0u8; 255];
        let mut hello = client_hello("a.test", true);
        assert!(server_name(b"GET / HTTP/1.1\r\n\r\n", &mut out).is_none());
        hello[5] = 2; // a ServerHello
        assert!(server_name(&hello, &mut out).is_none());
    }
}
