//! The relay's requests served against its rules ([`RelayIndex`]) and its
//! store ([`RelayStore`]): what the WebSocket shell calls once a device has
//! logged in. The index changes only after the store did what it records.

use std::io;

use super::policy::{admit_wrap, RelayIndex, RelayLimits, RelayRefusal, MAX_WRAPS_PER_MEMBER};
use super::protocol::{RelayRequest, RelayResponse, RelayStatus, MAX_LISTED_OBJECTS};
use super::store::RelayStore;
use crate::identity::PublicKey;
use crate::roster::Roster;

/// Where a relay keeps what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayLocation {
    /// A directory on the server (the embedded default).
    Dir(std::path::PathBuf),
    /// An S3-compatible bucket: `s3://BUCKET[/PREFIX]`.
    S3(String),
}

impl RelayLocation {
    /// `s3://...` is a bucket; anything else a directory.
    pub fn parse(text: &str) -> RelayLocation {
        if text.starts_with("s3://") {
            RelayLocation::S3(text.to_string())
        } else {
            RelayLocation::Dir(text.into())
        }
    }

    /// Opens the store (blocks: call it off async threads).
    pub fn open(&self) -> io::Result<Box<dyn RelayStore>> {
        Ok(match self {
            RelayLocation::Dir(dir) => Box::new(super::dir::RelayDir::open(dir)?),
            RelayLocation::S3(url) => Box::new(super::s3::S3Store::open(url)?),
        })
    }
}

impl std::fmt::Display for RelayLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayLocation::Dir(dir) => write!(f, "{}", dir.display()),
            RelayLocation::S3(url) => f.write_str(url),
        }
    }
}

/// A relay: rules and store.
#[derive(Debug)]
pub struct RelayService {
    index: RelayIndex,
    dir: Box<dyn RelayStore>,
}

impl RelayService {
    /// Rebuilds the index from `dir` (blocks: call it off async threads).
    pub fn open(dir: Box<dyn RelayStore>, limits: RelayLimits) -> io::Result<RelayService> {
        let mut index = RelayIndex::new(limits);
        for (group, ledger, objects) in dir.load()? {
            index.restore(group, ledger, objects);
        }
        Ok(RelayService { index, dir })
    }

    /// The group's use of the relay as `from` sees it.
    pub fn status(&self, roster: &Roster, from: &PublicKey) -> RelayStatus {
        let group = roster.group_id();
        let waiting = self.index.pending_for(roster, from, usize::MAX).map_or(0, |p| p.len() as u64);
        RelayStatus {
            usage: self.index.usage(&group),
            last_seq: self.index.last_seq(&group, &from.device_id()),
            waiting,
        }
    }

    /// Serves one request of `from`, a device logged in to `roster`'s group.
    pub fn handle(&mut self, roster: &Roster, from: &PublicKey, request: RelayRequest, now: u64) -> RelayResponse {
        match self.serve(roster, from, request, now) {
            Ok(response) => response,
            Err(Failure::Refused(why)) => RelayResponse::Refused(why),
            Err(Failure::Store(e)) => {
                tracing::error!("relay store: {e}");
                RelayResponse::Failed(format!("the relay's store failed: {e}"))
            }
        }
    }

    fn serve(
        &mut self,
        roster: &Roster,
        from: &PublicKey,
        request: RelayRequest,
        now: u64,
    ) -> Result<RelayResponse, Failure> {
        let group = roster.group_id();
        if !roster.is_active(from) {
            return Err(Failure::Refused(RelayRefusal::NotMember));
        }
        Ok(match request {
            RelayRequest::Login { .. } => RelayResponse::Failed("already logged in".into()),
            RelayRequest::Put(put) => {
                self.index.admit(roster, from, &put, now)?;
                if !self.dir.put_new(&group, &put.name, &put.signature, &put.sealed, now)? {
                    return Err(Failure::Refused(RelayRefusal::Exists { seq: put.name.seq }));
                }
                self.index.stored(group, put.name, put.sealed.len() as u64, now);
                self.save_ledger(roster)?;
                RelayResponse::Stored { name: put.name }
            }
            RelayRequest::Pending => {
                let objects = self.index.pending_for(roster, from, MAX_LISTED_OBJECTS)?;
                RelayResponse::Pending { objects: objects.into_iter().map(|(name, o)| (name, o.bytes)).collect() }
            }
            RelayRequest::Get { name } => {
                self.index.may_read(roster, from, &name)?;
                match self.dir.get(&group, &name)? {
                    Some((signature, sealed)) => RelayResponse::Object { name, signature, sealed },
                    None => return Err(Failure::Refused(RelayRefusal::NotFound)),
                }
            }
            RelayRequest::Ack { writer, seq } => {
                let gone = self.index.ack(roster, from, writer, seq, now)?;
                self.delete(roster, gone)?;
                RelayResponse::Acked
            }
            RelayRequest::PutWrap(wrap) => {
                admit_wrap(roster, from, &wrap)?;
                self.dir.put_wrap(&group, &wrap, MAX_WRAPS_PER_MEMBER)?;
                RelayResponse::WrapStored
            }
            RelayRequest::Wraps => RelayResponse::Wraps(self.dir.wraps(&group, from)?),
            RelayRequest::Usage => {
                let gone = self.index.collect(roster, now);
                self.delete(roster, gone)?;
                RelayResponse::Usage(self.status(roster, from))
            }
        })
    }

    /// Deletes what the rules released, after saving the ledger that
    /// released it (a crash between leaves files whose acknowledgements
    /// are saved: the next start loads them and collects them again).
    fn delete(&mut self, roster: &Roster, gone: Vec<super::seal::ObjectName>) -> Result<(), Failure> {
        self.save_ledger(roster)?;
        let group = roster.group_id();
        for name in gone {
            self.dir.delete(&group, &name)?;
        }
        Ok(())
    }

    fn save_ledger(&self, roster: &Roster) -> Result<(), Failure> {
        let group = roster.group_id();
        if let Some(ledger) = self.index.ledger(&group) {
            self.dir.save_ledger(&group, ledger)?;
        }
        Ok(())
    }

    /// Retention and removed members, for every group the relay holds
    /// (the shell calls it now and then with each group's roster).
    pub fn collect(&mut self, roster: &Roster, now: u64) {
        let gone = self.index.collect(roster, now);
        if !gone.is_empty() {
            if let Err(Failure::Store(e)) = self.delete(roster, gone) {
                tracing::error!("relay store: {e}");
            }
        }
    }
}

enum Failure {
    Refused(RelayRefusal),
    Store(io::Error),
}

impl From<RelayRefusal> for Failure {
    fn from(why: RelayRefusal) -> Self {
        Failure::Refused(why)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Store(e)
    }
}
