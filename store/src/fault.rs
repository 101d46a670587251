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
}
