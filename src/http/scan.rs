//! Finds the end of a head as its bytes trickle in, looking at each byte once. Parsing the
//! whole buffer again on every read would cost O(n^2) for a head sent a byte at a time
//! (16 KiB in 1-byte writes: 16,384 parses of up to 16 KiB each); with the scan, a head is
//! parsed at most three times: after the first read (so garbage is refused at once), when
//! its first line is complete, and when its empty line has arrived.

/// Where the scan of one head stands; a fresh one per head.
#[derive(Debug, Default)]
pub struct HeadScan {
    /// Bytes of the buffer looked at so far.
    scanned: usize,
    /// The first read was seen (and offered for parsing).
    started: bool,
    /// A byte other than CR or LF was seen: empty lines before the first line do not end a
    /// head (RFC 9112 section 2.2 lets them be ignored).
    in_head: bool,
    first_line: bool,
}

impl HeadScan {
    /// Looks at the bytes of `buf` that arrived since the last call (the earlier ones must be
    /// unchanged) and says whether parsing the buffer now may tell more than last time.
    pub fn ready(&mut self, buf: &[u8]) -> bool {
        let first = !self.started;
        self.started = true;
        let mut offer = first;
        while self.scanned < buf.len() {
            let i = self.scanned;
            self.scanned += 1;
            match buf[i] {
                b'\n' if self.in_head => {
                    if !self.first_line {
                        self.first_line = true;
                        offer = true;
                    }
                    if ends_empty_line(buf, i) {
                        // Past the end: the rest is body, not looked at.
                        self.scanned = buf.len();
                        return true;
                    }
                }
                b'\r' | b'\n' => {}
                _ => self.in_head = true,
            }
        }
        offer
    }
}

/// Whether the LF at `i` ends an empty line (`\n\n` or `\n\r\n`).
fn ends_empty_line(buf: &[u8], i: usize) -> bool {
    match i.checked_sub(1).map(|j| buf[j]) {
        Some(b'\n') => true,
        Some(b'\r') => i >= 2 && buf[i - 2] == b'\n',
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many parses a head sent in `step`-byte pieces costs.
    fn parses(head: &[u8], step: usize) -> usize {
        let mut scan = HeadScan::default();
        let mut buf = Vec::new();
        let mut n = 0;
        for piece in head.chunks(step) {
            buf.extend_from_slice(piece);
            if scan.ready(&buf) {
                n += 1;
            }
        }
        n
    }

    fn big_head() -> Vec<u8> {
        let mut head = b"GET /ws HTTP/1.1\r\nHost: x\r\n".to_vec();
        while head.len() < 16 * 1024 - 40 {
            head.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    #[test]
    fn parse_work_is_linear() {
        let head = big_head();
        // First read, first line, end of head.
        assert_eq!(parses(&head, 1), 3);
        assert_eq!(parses(&head, 7), 3);
        assert_eq!(parses(&head, head.len()), 1);
    }

    #[test]
    fn offers_the_end_of_head_in_any_line_ending() {
        for head in [
            &b"GET / HTTP/1.1\r\nA: b\r\n\r\n"[..],
            b"GET / HTTP/1.1\nA: b\n\n",
        ] {
            let mut scan = HeadScan::default();
            let cut = head.len() - 1;
            assert!(scan.ready(&head[..1]), "first read");
            assert!(scan.ready(&head[..cut]), "first line");
            assert!(!scan.ready(&head[..cut]), "nothing new");
            assert!(scan.ready(head), "end of head");
        }
    }

    #[test]
    fn leading_empty_lines_do_not_end_a_head() {
        let mut scan = HeadScan::default();
        assert!(scan.ready(b"\r\n"));
        assert!(!scan.ready(b"\r\n\r\n\r\n"));
        assert!(!scan.ready(b"\r\n\r\n\r\nGET / HTTP/1.1"));
        assert!(scan.ready(b"\r\n\r\n\r\nGET / HTTP/1.1\r\n"));
        assert!(!scan.ready(b"\r\n\r\n\r\nGET / HTTP/1.1\r\nA: b\r\n"));
        assert!(scan.ready(b"\r\n\r\n\r\nGET / HTTP/1.1\r\nA: b\r\n\r\n"));
    }
}
