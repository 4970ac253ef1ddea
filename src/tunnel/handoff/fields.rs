//! The handoff's byte format: little-endian integers and length-prefixed byte strings, read
//! back with every length checked, so a message cut short or from another build is refused
//! with a reason instead of read past its end.

/// A message that does not read as what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("handoff message is malformed: {0}")]
pub struct Malformed(pub &'static str);

/// Appends fields to a message.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length (u32) and the bytes.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }

    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
}

/// Takes fields off the front of a message.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed("cut short"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    pub fn str(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Malformed("text is not UTF-8"))
    }

    /// Whether every byte was read.
    pub fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed("bytes left over"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_back_as_written() {
        let mut message = Vec::new();
        Writer(&mut message)
            .u8(7)
            .u32(70_000)
            .u64(u64::MAX - 1)
            .str("/chat")
            .bytes(&[0, 1, 2]);
        let mut r = Reader(&message);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u32(), Ok(70_000));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.str(), Ok("/chat"));
        assert_eq!(r.bytes(), Ok(&[0u8, 1, 2][..]));
        assert_eq!(r.end(), Ok(()));
    }

    #[test]
    fn a_message_cut_short_is_malformed_not_read_past() {
        let mut message = Vec::new();
        Writer(&mut message).str("/a-long-route");
        let mut r = Reader(&message[..6]);
        assert_eq!(r.str(), Err(Malformed("cut short")));
        let mut r = Reader(&[1, 2]);
        assert!(r.u32().is_err());
        let r = Reader(&[1]);
        assert_eq!(r.end(), Err(Malformed("bytes left over")));
    }
}
