//! Registered descriptors: each tunnel's two sockets sit in the ring's file table, and its
//! receives, sends and polls name their slot (IOSQE_FIXED_FILE), so the kernel skips
//! looking the descriptor up and taking a reference on every operation (`fget`/`fput`:
//! 2.1% of the proxy's CPU in a profile of rr at 200 connections). Splicing still uses the
//! descriptors themselves.
//!
//! Tunnel `i` owns slots `2i` (client) and `2i + 1` (upstream). They are filled and
//! cleared with IORING_OP_FILES_UPDATE entries queued ahead of the tunnel's first operation
//! and after its last: the kernel issues entries in order, so no system call of its own.
//! A cleared slot matters: the table holds a reference to the socket, which would
//! otherwise stay open after the tunnel closed its descriptor.

use std::os::fd::RawFd;

use io_uring::{IoUring, opcode, squeue};

use super::handoff::CANCEL;
use super::with_field;

/// The `user_data` of a table update (its completion is only checked for an error).
pub(super) const UPDATED: u64 = CANCEL | 1;
/// What a cleared pair of slots holds.
static CLEARED: [RawFd; 2] = [-1, -1];
/// The kernel's limit on a file table (IORING_MAX_FIXED_FILES).
const MAX_SLOTS: usize = 1 << 20;

/// The ring's file table, as far as it holds tunnels.
pub(super) struct Files {
    /// Tunnels `0..tunnels` have slots; later ones (past `limits.max_connections`, or all
    /// where the kernel refused a table) use their descriptors.
    tunnels: u32,
    /// What each slot is to hold, read by the kernel when it runs the update.
    fds: Box<[RawFd]>,
}

impl Files {
    /// A sparse table for `max_connections` tunnels, as far as the open-files limit allows
    /// (the kernel refuses a bigger one); none if the kernel has no sparse tables (5.19).
    pub(super) fn register(ring: &IoUring, max_connections: usize) -> Files {
        // The soft open-files limit: a table may not be larger.
        let nofile =
            crate::os::fdlimit::current().map_or(0, |n| usize::try_from(n).unwrap_or(MAX_SLOTS));
        let slots = (2 * max_connections).min(MAX_SLOTS).min(nofile) & !1;
        match ring.submitter().register_files_sparse(slots as u32) {
            Ok(()) => Files {
                tunnels: (slots / 2) as u32,
                fds: vec![-1; slots].into_boxed_slice(),
            },
            Err(e) => {
                tracing::info!("tunnels use plain descriptors (no registered file table: {e})");
                Files {
                    tunnels: 0,
                    fds: Box::default(),
                }
            }
        }
    }

    /// The slot of side `side` (0: client, 1: upstream) of tunnel `index`, if it has one.
    pub(super) fn slot(&self, index: u32, side: usize) -> Option<u32> {
        (index < self.tunnels).then(|| 2 * index + side as u32)
    }

    /// The entry that puts `fds` ([client, upstream]) in tunnel `index`'s slots, or clears
    /// them (`None`); nothing where the tunnel has no slots.
    pub(super) fn update(&mut self, index: u32, fds: Option<[RawFd; 2]>) -> Option<squeue::Entry> {
        let at = self.slot(index, 0)? as usize;
        let from = match fds {
            Some(fds) => {
                self.fds[at..at + 2].copy_from_slice(&fds);
                self.fds[at..].as_ptr()
            }
            None => CLEARED.as_ptr(),
        };
        Some(
            opcode::FilesUpdate::new(from, 2)
                .offset(at as i32)
                .build()
                .user_data(UPDATED),
        )
    }
}

/// `sqe` on registered slot `slot` instead of the descriptor it was built with: the entry's
/// `fd` field, which io-uring 0.6 sets only through its sealed target types.
pub(super) fn on_slot(sqe: squeue::Entry, slot: u32) -> squeue::Entry {
    /// `offsetof(struct io_uring_sqe, fd)`.
    const FD: usize = 4;
    with_field(sqe, FD, slot).flags(squeue::Flags::FIXED_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use io_uring::types::Fd;

    fn raw(sqe: squeue::Entry) -> [u8; 64] {
        // SAFETY: as in `on_slot`.
        #[allow(unsafe_code)]
        unsafe {
            std::mem::transmute(sqe)
        }
    }

    #[test]
    fn an_entry_on_a_slot_names_the_slot_and_keeps_its_flags() {
        let recv = opcode::Recv::new(Fd(5), std::ptr::null_mut(), 64)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT);
        let raw = raw(on_slot(recv, 9));
        assert_eq!(i32::from_ne_bytes(raw[4..8].try_into().unwrap()), 9);
        let flags = squeue::Flags::from_bits_truncate(raw[1]);
        assert!(flags.contains(squeue::Flags::FIXED_FILE | squeue::Flags::BUFFER_SELECT));
    }

    #[test]
    fn slots_pair_up_and_run_out() {
        let mut files = Files {
            tunnels: 2,
            fds: vec![-1; 4].into_boxed_slice(),
        };
        assert_eq!(files.slot(1, 0), Some(2));
        assert_eq!(files.slot(1, 1), Some(3));
        assert_eq!(files.slot(2, 0), None);
        let update = raw(files.update(1, Some([7, 8])).unwrap());
        assert_eq!(&files.fds[2..], &[7, 8]);
        // The update names the pair at slot 2 (`off`, at byte 8).
        assert_eq!(u64::from_ne_bytes(update[8..16].try_into().unwrap()), 2);
        assert!(files.update(2, Some([7, 8])).is_none());
        assert!(files.update(1, None).is_some());
    }
}
