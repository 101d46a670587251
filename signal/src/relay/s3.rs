//! The relay's store in an S3-compatible bucket (`psync signal --relay
//! s3://BUCKET/PREFIX`), for operators who outgrow one disk. The endpoint
//! and credentials come from the usual variables (`AWS_ENDPOINT_URL`,
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
//! `AWS_ALLOW_HTTP=true` for a plain-HTTP endpoint). The layout is the
//! directory store's ([`super::store`]) with shorter keys (ids in base64url,
//! `o/` objects, `l` the ledger, `w/` wraps: some servers keep each key in
//! one file name of at most 255 bytes): `PREFIX/GROUP/o/WRITER/SEQ`,
//! `PREFIX/GROUP/l`, `PREFIX/GROUP/w/MEMBER/EPOCH-MAKER`. The relay is the
//! bucket's only writer, and its index refuses a used name before
//! anything is put.

use std::io;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload};
use psync_base::{codec, ContentHash, DeviceId};

use super::policy::{GroupLedger, StoredObject};
use super::seal::ObjectName;
use super::store::{split_object, FoundGroup, RelayStore, SIGNATURE_BYTES};
use super::wrap::SignedWrap;
use crate::identity::{PublicKey, SignatureBytes};

/// A bucket (and a prefix in it) as a relay store.
pub struct S3Store {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Drives the client; the relay's calls block on it (they run off the
    /// server's async threads).
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl Drop for S3Store {
    fn drop(&mut self) {
        // May be dropped on an async thread: never block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64_32(text: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?.try_into().ok()
}

fn object_key(name: &ObjectName) -> String {
    format!("o/{}/{}", b64(&name.writer.0), name.seq)
}

fn wraps_key(to: &PublicKey) -> String {
    format!("w/{}", b64(&to.0))
}

fn wrap_key(wrap: &SignedWrap) -> String {
    // The maker by a prefix of its id: enough to tell makers apart.
    format!("{}/{}-{}", wraps_key(&wrap.wrap.to), wrap.wrap.epoch, b64(&wrap.by.0[..8]))
}

impl S3Store {
    /// Opens `s3://BUCKET[/PREFIX]` with the endpoint and credentials of
    /// the environment.
    pub fn open(url: &str) -> io::Result<S3Store> {
        S3Store::open_with(url, &[])
    }

    /// [`S3Store::open`] with settings over the environment's, as
    /// (key, value): `aws_endpoint`, `aws_access_key_id`, `aws_allow_http`...
    pub fn open_with(url: &str, options: &[(&str, &str)]) -> io::Result<S3Store> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{url:?} is not an s3:// URL")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{url:?} names no bucket")));
        }
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in options {
            let key: object_store::aws::AmazonS3ConfigKey = key.parse().map_err(other)?;
            builder = builder.with_config(key, *value);
        }
        let store = builder.build().map_err(other)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("psync-relay-s3")
            .enable_all()
            .build()?;
        Ok(S3Store { store: Arc::new(store), prefix: prefix.trim_matches('/').to_string(), runtime: Some(runtime) })
    }

    fn block_on<T>(&self, work: impl std::future::Future<Output = T>) -> io::Result<T> {
        match &self.runtime {
            Some(runtime) => Ok(runtime.block_on(work)),
            None => Err(other("the S3 store is closed")),
        }
    }

    fn path(&self, group: &ContentHash, below: &str) -> ObjectPath {
        let group = b64(&group.0);
        if self.prefix.is_empty() {
            ObjectPath::from(format!("{group}/{below}"))
        } else {
            ObjectPath::from(format!("{}/{group}/{below}", self.prefix))
        }
    }

    fn root(&self) -> Option<ObjectPath> {
        (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()))
    }

    fn read(&self, path: &ObjectPath) -> io::Result<Option<Vec<u8>>> {
        let store = self.store.clone();
        let path = path.clone();
        self.block_on(async move {
            match store.get(&path).await {
                Ok(found) => found.bytes().await.map(|b| Some(b.to_vec())).map_err(other),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(other(e)),
            }
        })?
    }

    fn write(&self, path: &ObjectPath, bytes: Vec<u8>) -> io::Result<()> {
        let store = self.store.clone();
        let path = path.clone();
        self.block_on(async move { store.put(&path, PutPayload::from(bytes)).await.map(|_| ()).map_err(other) })?
    }

    fn remove(&self, path: &ObjectPath) -> io::Result<()> {
        let store = self.store.clone();
        let path = path.clone();
        self.block_on(async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(other(e)),
            }
        })?
    }

    fn list(&self, prefix: Option<ObjectPath>) -> io::Result<Vec<object_store::ObjectMeta>> {
        let store = self.store.clone();
        self.block_on(async move { store.list(prefix.as_ref()).try_collect::<Vec<_>>().await.map_err(other) })?
    }
}

/// A wrap's epoch from its key (`.../EPOCH-MAKER`), to keep the newest.
fn epoch_of(path: &ObjectPath) -> u32 {
    let name = path.filename().unwrap_or_default();
    name.split('-').next().and_then(|e| e.parse().ok()).unwrap_or(0)
}

impl RelayStore for S3Store {
    fn put_new(
        &self,
        group: &ContentHash,
        name: &ObjectName,
        signature: &SignatureBytes,
        sealed: &[u8],
        _now_ms: u64,
    ) -> io::Result<bool> {
        // The index refuses a used name before this (and rebuilds from
        // what is listed here at start): what may sit under a new name is
        // only the remains of a put that failed, replaced here.
        self.write(&self.path(group, &object_key(name)), [&signature.0[..], sealed].concat())?;
        Ok(true)
    }

    fn get(&self, group: &ContentHash, name: &ObjectName) -> io::Result<Option<(SignatureBytes, Vec<u8>)>> {
        self.read(&self.path(group, &object_key(name)))?.map(split_object).transpose()
    }

    fn delete(&self, group: &ContentHash, name: &ObjectName) -> io::Result<()> {
        self.remove(&self.path(group, &object_key(name)))
    }

    fn save_ledger(&self, group: &ContentHash, ledger: &GroupLedger) -> io::Result<()> {
        let bytes = codec::encode(ledger).map_err(other)?;
        self.write(&self.path(group, "l"), bytes)
    }

    fn load(&self) -> io::Result<Vec<FoundGroup>> {
        let mut groups: std::collections::BTreeMap<ContentHash, FoundGroup> = Default::default();
        for meta in self.list(self.root())? {
            let owned: Vec<String> = meta.location.parts().map(|p| p.as_ref().to_string()).collect();
            let parts: Vec<&str> = owned.iter().map(String::as_str).collect();
            let skip = if self.prefix.is_empty() { 0 } else { self.prefix.split('/').count() };
            let Some(below) = parts.get(skip..) else { continue };
            let Some(group) = below.first().and_then(|g| unb64_32(g)).map(ContentHash) else { continue };
            let entry = groups.entry(group).or_insert_with(|| (group, GroupLedger::default(), Vec::new()));
            match below.get(1..) {
                Some(["l"]) => {
                    if let Some(bytes) = self.read(&meta.location)? {
                        entry.1 = codec::decode(&bytes).map_err(other)?;
                    }
                }
                Some(["o", writer, seq]) => {
                    let (Some(writer), Ok(seq)) = (unb64_32(writer), seq.parse::<u64>()) else { continue };
                    let stored = StoredObject {
                        bytes: meta.size.saturating_sub(SIGNATURE_BYTES as u64),
                        stored_at: meta.last_modified.timestamp_millis().max(0) as u64,
                    };
                    entry.2.push((ObjectName { writer: DeviceId(writer), seq }, stored));
                }
                _ => {}
            }
        }
        Ok(groups.into_values().collect())
    }

    fn put_wrap(&self, group: &ContentHash, wrap: &SignedWrap, keep: usize) -> io::Result<()> {
        let bytes = codec::encode(wrap).map_err(other)?;
        self.write(&self.path(group, &wrap_key(wrap)), bytes)?;
        let dir = self.path(group, &wraps_key(&wrap.wrap.to));
        let mut found: Vec<(u32, ObjectPath)> =
            self.list(Some(dir))?.into_iter().map(|m| (epoch_of(&m.location), m.location)).collect();
        found.sort();
        let excess = found.len().saturating_sub(keep);
        for (_, old) in &found[..excess] {
            self.remove(old)?;
        }
        Ok(())
    }

    fn wraps(&self, group: &ContentHash, to: &PublicKey) -> io::Result<Vec<SignedWrap>> {
        let dir = self.path(group, &wraps_key(to));
        let mut found: Vec<(u32, ObjectPath)> =
            self.list(Some(dir))?.into_iter().map(|m| (epoch_of(&m.location), m.location)).collect();
        found.sort();
        let mut out = Vec::new();
        for (_, path) in found {
            if let Some(wrap) = self.read(&path)?.and_then(|b| codec::decode::<SignedWrap>(&b).ok()) {
                out.push(wrap);
            }
        }
        Ok(out)
    }
}
