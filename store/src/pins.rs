//! Pins: open handles and the kernel's lookup references keep an unlinked
//! inode alive; handles that may write keep a peer's version out.

use crate::error::Result;
use crate::records::*;
use crate::store::Store;

impl Store {
    /// A handle that may write `ino` was opened.
    pub fn writer_opened(&self, ino: u64) {
        *self.writers.lock().unwrap_or_else(|p| p.into_inner()).entry(ino).or_insert(0) += 1;
    }

    /// That handle was closed (after its content was committed).
    pub fn writer_closed(&self, ino: u64) {
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = writers.get_mut(&ino) {
            *count -= 1;
            if *count == 0 {
                writers.remove(&ino);
            }
        }
    }

    /// Whether `ino` is open for writing.
    pub fn has_writer(&self, ino: u64) -> bool {
        self.writers.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&ino)
    }

    /// Pins `ino` `n` times (an open handle, or a lookup the kernel counts).
    pub fn pin(&self, ino: u64, n: u64) {
        let mut pins = self.pins();
        let count = pins.entry(ino).or_insert(0);
        *count = count.saturating_add(n);
    }

    /// Drops `n` pins of `ino`; an unlinked inode is deleted with its last pin.
    pub fn unpin(&self, ino: u64, n: u64) -> Result<()> {
        let last = {
            let mut pins = self.pins();
            match pins.get_mut(&ino) {
                Some(count) if *count > n => {
                    *count -= n;
                    false
                }
                Some(_) => {
                    pins.remove(&ino);
                    true
                }
                None => false,
            }
        };
        if !last {
            return Ok(());
        }
        self.mutate(false, |txn| {
            // Re-check under the writer lock: a new pin may have arrived.
            if txn.store.is_pinned(ino) {
                return Ok(());
            }
            if let Some(node) = txn.inode_opt(ino)? {
                if node.links.is_empty() && node.ino != ROOT_INO {
                    txn.delete_orphan(ino);
                    txn.delete_inode(ino);
                }
            }
            Ok(())
        })
    }

    fn is_pinned(&self, ino: u64) -> bool {
        self.pins().contains_key(&ino)
    }
}
