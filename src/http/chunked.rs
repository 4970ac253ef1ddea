//! Where a chunked body ends (RFC 9112 section 7.1), found as its bytes go by: the proxy
//! relays a chunked body up to its last chunk and trailers and not a byte further, without
//! decoding it. Chunk data is skipped in one step; only the size lines and the trailers are
//! looked at byte by byte. Strict like the head: a bare LF, a non-hex size or an oversized
//! line ends the body as malformed rather than being guessed at.

/// The longest chunk-size line (size and extensions) or trailer section accepted.
pub const MAX_LINE: usize = 4096;
/// The most trailer bytes after the last chunk.
pub const MAX_TRAILERS: usize = 16 * 1024;

/// A chunked body's framing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: State,
    /// Bytes of the current size line, or of the trailer section.
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: `;` extensions or whitespace, up to CR.
    Extension {
        size: u64,
    },
    /// CR of the size line seen, LF due.
    SizeLf {
        size: u64,
    },
    /// `left` bytes of chunk data to go.
    Data {
        left: u64,
    },
    /// The CR after chunk data due.
    DataCr,
    /// The LF after chunk data due.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field line, up to CR.
    Trailer,
    /// CR of a trailer line seen, LF due.
    TrailerLf,
    /// CR of the final empty line seen, LF due.
    EndLf,
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { size: 0, digits: 0 },
            line: 0,
        }
    }
}

impl Chunked {
    /// Whether the last chunk and the trailers have gone by.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes the body's bytes from the start of `buf`; returns how many belong to it (all of
    /// them unless it ended inside `buf`). Err: the body is malformed.
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, &'static str> {
        let mut i = 0;
        while i < buf.len() {
            if let State::Data { left } = self.state {
                let n = usize::try_from(left).map_or(buf.len() - i, |l| l.min(buf.len() - i));
                i += n;
                let left = left - n as u64;
                self.state = if left == 0 {
                    State::DataCr
                } else {
                    State::Data { left }
                };
                continue;
            }
            if self.state == State::Done {
                return Ok(i);
            }
            self.step(buf[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<(), &'static str> {
        self.line += 1;
        self.state = match self.state {
            State::Size { size, digits } => {
                if let Some(d) = (b as char).to_digit(16) {
                    if digits == 15 {
                        return Err("chunk size too large");
                    }
                    State::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    }
                } else if digits == 0 {
                    return Err("invalid chunk size");
                } else {
                    self.after_size(size, b)?
                }
            }
            State::Extension { size } => self.after_size(size, b)?,
            State::SizeLf { size } => {
                lf(b)?;
                self.line = 0;
                if size == 0 {
                    State::TrailerStart
                } else {
                    State::Data { left: size }
                }
            }
            State::DataCr if b == b'\r' => State::DataLf,
            State::DataCr => return Err("chunk data not followed by CRLF"),
            State::DataLf => {
                lf(b)?;
                self.line = 0;
                State::Size { size: 0, digits: 0 }
            }
            State::TrailerStart if b == b'\r' => State::EndLf,
            State::TrailerStart | State::Trailer => self.trailer_byte(b)?,
            State::TrailerLf => {
                lf(b)?;
                State::TrailerStart
            }
            State::EndLf => {
                lf(b)?;
                State::Done
            }
            State::Data { .. } | State::Done => unreachable!("handled by feed"),
        };
        Ok(())
    }

    /// A byte of a size line after its digits: extensions are passed through unread.
    fn after_size(&self, size: u64, b: u8) -> Result<State, &'static str> {
        if self.line > MAX_LINE {
            return Err("chunk size line too long");
        }
        match b {
            b'\r' => Ok(State::SizeLf { size }),
            b'\t' | b' '..=b'~' | 0x80..=0xff => Ok(State::Extension { size }),
            _ => Err("invalid byte in a chunk size line"),
        }
    }

    fn trailer_byte(&self, b: u8) -> Result<State, &'static str> {
        if self.line > MAX_TRAILERS {
            return Err("chunked trailers too large");
        }
        match b {
            b'\r' => Ok(State::TrailerLf),
            b'\t' | b' '..=b'~' | 0x80..=0xff => Ok(State::Trailer),
            _ => Err("invalid byte in a chunked trailer"),
        }
    }
}

fn lf(b: u8) -> Result<(), &'static str> {
    if b == b'\n' {
        Ok(())
    } else {
        Err("CR not followed by LF in a chunked body")
    }
}

#[cfg(test)]
mod tests;
