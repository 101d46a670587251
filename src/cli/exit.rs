//! Exit codes: a script can tell "could not run" from "ran and found
//! something wrong". Listed in `psync --help`.

use psync_store::StoreError;

use crate::control::client::NoDaemon;

/// Could not run (the message says why).
pub const FAILED: u8 = 1;
/// Bad usage (clap's own code).
pub const USAGE: u8 = 2;
/// `psync fsck` ran and found damage.
pub const DAMAGED: u8 = 3;
/// No daemon serves the data dir (a command that needs one).
pub const NO_DAEMON: u8 = 4;
/// The store is in use by a running daemon (a command that needs it alone).
pub const STORE_BUSY: u8 = 5;

/// The exit code for a command that failed with `error`.
pub fn code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if cause.downcast_ref::<NoDaemon>().is_some() {
            return NO_DAEMON;
        }
        if let Some(StoreError::Locked(_)) = cause.downcast_ref::<StoreError>() {
            return STORE_BUSY;
        }
    }
    FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_found_through_context() {
        let codes = [FAILED, USAGE, DAMAGED, NO_DAEMON, STORE_BUSY];
        let mut sorted = codes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
        let busy = anyhow::Error::new(StoreError::Locked("/d".into())).context("opening");
        assert_eq!(code_of(&busy), STORE_BUSY);
        assert_eq!(code_of(&anyhow::Error::new(NoDaemon("/d".into())).context("revert")), NO_DAEMON);
        assert_eq!(code_of(&anyhow::anyhow!("anything else")), FAILED);
    }
}
