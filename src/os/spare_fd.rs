//! A file descriptor held in reserve by each accept loop. A process out of descriptors cannot
//! accept, and its clients would wait in the backlog without a word; closing the spare lets
//! one of them be accepted and told 503 before it is closed and the spare taken back.

use std::fs::File;
use std::os::fd::OwnedFd;

/// One descriptor (`/dev/null`), held while nothing needs it.
#[derive(Debug)]
pub struct SpareFd(Option<OwnedFd>);

impl SpareFd {
    /// Takes the spare; holds nothing if the process is already out of descriptors.
    pub fn open() -> SpareFd {
        SpareFd(take())
    }

    /// Closes the spare so that its descriptor number is free; `false` if none was held.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a spare again if none is held and a descriptor is free; `true` if one is held.
    pub fn restore(&mut self) -> bool {
        if self.0.is_none() {
            self.0 = take();
        }
        self.0.is_some()
    }
}

fn take() -> Option<OwnedFd> {
    File::open("/dev/null").ok().map(OwnedFd::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_frees_and_restore_takes_back() {
        let mut spare = SpareFd::open();
        assert!(spare.restore());
        assert!(spare.release());
        assert!(!spare.release());
        assert!(spare.restore());
        assert!(spare.release());
    }
}
