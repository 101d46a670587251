//! Ignore rules in the core: read from the store's `.psyncignore` when it
//! may have changed (a local change, or a peer's version of it installed),
//! and asked before a record is announced or a peer's record installed.
//! A change of rules rebuilds the anti-entropy tree, so a path that stops
//! being ignored reaches peers through the next walk, and one that becomes
//! ignored simply stays as it is everywhere.

use super::*;
use crate::ignore::{rules_in, IgnoreRules};

impl<S: SyncStorage> SyncCore<S> {
    /// The rules in force.
    pub fn ignore_rules(&self) -> &IgnoreRules {
        &self.ignore.rules
    }

    /// Whether `record`'s path stays on this device.
    pub(super) fn ignored(&self, record: &FileRecord) -> bool {
        self.ignore.rules.is_ignored(&record.path, record.kind == RecordKind::Dir)
    }

    /// Reads the rules again if `.psyncignore` may have changed.
    pub(super) fn reload_ignore(&mut self) -> Result<(), SyncError> {
        if !std::mem::take(&mut self.ignore.stale) {
            return Ok(());
        }
        let (rules, digest) = match rules_in(&self.storage) {
            Ok(read) => read,
            Err(e) => {
                self.ignore.stale = true;
                return Err(e.into());
            }
        };
        if self.ignore.loaded && digest == self.ignore.digest {
            return Ok(());
        }
        self.ignore = IgnoreState { rules, digest, stale: false, loaded: true };
        self.tree = LiveTree::default();
        Ok(())
    }

    /// The anti-entropy tree with every change in, ignored paths left out.
    pub(super) fn refresh_tree(&mut self) -> Result<(), SyncError> {
        self.tree.refresh(&self.storage, &self.ignore.rules)?;
        Ok(())
    }
}

/// The rules and what they were read from.
#[derive(Debug, Default)]
pub(super) struct IgnoreState {
    pub rules: IgnoreRules,
    /// Digest of the `.psyncignore` record read (`None`: none).
    pub digest: Option<ContentHash>,
    /// `.psyncignore` may have changed since.
    pub stale: bool,
    /// Read at least once.
    pub loaded: bool,
}
