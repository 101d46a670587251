//! Hooks that damage a store on purpose, so tests can prove that damage is
//! detected. Compiled only with the `fault-injection` feature (tests).

use psync_base::{codec, ContentHash};

use crate::error::Result;
use crate::keys;
use crate::records::FormatRecord;
use crate::store::Store;

impl Store {
    /// Replaces a block's bytes without changing its key (simulates bit rot).
    pub fn debug_overwrite_block(&self, hash: &ContentHash, data: &[u8]) -> Result<()> {
        self.db().put_cf(self.blocks_cf(), hash.as_bytes(), data).map_err(|e| self.rocks_err(e))
    }

    /// Deletes a block that may still be referenced.
    pub fn debug_delete_block(&self, hash: &ContentHash) -> Result<()> {
        self.db().delete_cf(self.blocks_cf(), hash.as_bytes()).map_err(|e| self.rocks_err(e))
    }

    /// Rewrites the format version (simulates a store from a newer psync).
    pub fn debug_set_format_version(&self, version: u32) -> Result<()> {
        let mut format: FormatRecord =
            self.get_record(keys::FORMAT)?.ok_or_else(|| crate::StoreError::Corrupt("format record missing".into()))?;
        format.format_version = version;
        self.db().put_cf(self.meta(), keys::FORMAT, codec::encode(&format)?).map_err(|e| self.rocks_err(e))
    }

    /// Turns this store into one of format 2 with `entries` keys of its
    /// inode-level change log (`s`, `t`), as psync wrote them before format 3,
    /// so tests can prove the migration removes them.
    pub fn debug_make_format_2_change_log(&self, entries: u64) -> Result<()> {
        for n in 1..=entries {
            let mut change = vec![b's'];
            change.extend_from_slice(&n.to_be_bytes());
            self.db().put_cf(self.meta(), change, [0u8, 1]).map_err(|e| self.rocks_err(e))?;
            let mut tombstone = vec![b't'];
            tombstone.extend_from_slice(&u128::from(n).to_be_bytes());
            self.db().put_cf(self.meta(), tombstone, [0u8; 8]).map_err(|e| self.rocks_err(e))?;
        }
        self.debug_set_format_version(2)
    }
}
