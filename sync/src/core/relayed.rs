//! Bundles a member left at the relay, taken as if that member had sent
//! them: its records through the usual decisions, then its objects as
//! answers to what those versions wait for. The shell has checked the
//! writer's signature and opened the seal; every object is still checked
//! against its hash here, like any peer's. A storage failure is returned:
//! the shell then does not acknowledge the bundle and offers it again.

use super::*;
use crate::relay::RelayBundle;

impl<S: SyncStorage> SyncCore<S> {
    pub(super) fn on_relayed(&mut self, writer: DeviceId, bundle: RelayBundle) -> Result<(), SyncError> {
        if writer == self.device {
            return Ok(());
        }
        if !self.config.group.contains(&writer) {
            self.violation(writer, "a relayed bundle from a device outside the group");
            return Ok(());
        }
        for record in bundle.records {
            self.take_record(writer, record, None)?;
        }
        for object in bundle.objects {
            let data = object.into_vec();
            let hash = ContentHash::of(&data);
            match self.fetch.arrived(&mut self.storage, writer, hash, Some(data)) {
                // Already here, or for a version already superseded.
                Ok(Arrival::Unwanted | Arrival::Refused) => {}
                Ok(Arrival::Corrupt) => {
                    self.violation(writer, format!("relayed object {hash} is not a valid block or page"));
                    return Ok(());
                }
                Ok(Arrival::Stored(done)) => self.settle(done)?,
                // The bundle is not taken: the shell keeps it at the relay
                // (unacknowledged) and offers it again later.
                Err(StorageError::DiskFull) => {
                    self.pause_for_full_disk();
                    return Err(StorageError::DiskFull.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
