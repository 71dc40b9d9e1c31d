//! Checkpoints in an object store (feature `remote`): S3 and anything that
//! speaks it, Google Cloud Storage, Azure Blob Storage and a local
//! `file://` root, through the `object_store` crate.
//!
//! - **Push** ([`push`], `selfdump push DIR URL`): the owner of a
//!   checkpoint uploads it with its own cloud credentials (the root service
//!   never holds any). Files are cut into content-addressed zstd chunks
//!   (`format.rs`); only the chunks the store lacks are uploaded, in
//!   parallel; the checkpoint object goes last. The result is the
//!   checkpoint's URL, `ROOT/checkpoints/<id>`, whose id is the hash of
//!   that object: the URL itself certifies what it names.
//! - **Restore anywhere** ([`restore_url`], [`restore_url_copies`],
//!   `selfdump restore URL [--copies N] [--lazy]`, as root): the object is
//!   fetched and checked against its id, its signed manifest verified with
//!   the keys this host trusts, the host checked against what the
//!   checkpoint needs, every name and size of the index checked; only then
//!   are chunks fetched (in parallel), each checked against its hash before
//!   it enters the host's root-only cache ([`cache`]), and the files
//!   assembled in a directory of root's, which the verified restore path
//!   (`restore`, `copies`) then verifies again, file by file, and restores.
//! - **Pull** ([`pull`], `selfdump pull URL DIR`): the same checks, then a
//!   generation in `DIR` that plain CRIU restores (`criu restore -D
//!   DIR/latest`), made by whoever runs it, without the root cache.
//!
//! Credentials and endpoints come the way each ecosystem expects: the
//! `AWS_*` variables for `s3://` (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for another
//! server, `AWS_ALLOW_HTTP=true` for plain HTTP), `GOOGLE_*` for `gs://`,
//! `AZURE_*` for `az://`. A store may silently overwrite or lose objects:
//! correctness rests on the hashes and the signature alone.

mod assemble;
pub mod cache;
mod chunker;
mod fetch;
pub mod format;
mod push;
mod restore;
mod runtime;

pub use cache::{Cache, DEFAULT_CACHE_DIR};
pub use fetch::{Checkpoint, inspect};
pub use push::{Pushed, push};
pub use restore::{Pulled, pull, restore_url, restore_url_copies};

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why a store operation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not one the store understands.
    Url(String),
    /// The store could not be reached or answered with an error.
    Unreachable {
        /// The object asked for.
        object: String,
        /// What the store (or the network) said.
        message: String,
    },
    /// An object the checkpoint needs is not in the store.
    Missing {
        /// Its name.
        object: String,
    },
    /// What the store holds did not verify; nothing of it was used.
    Refused(String),
    /// Reading or writing local files failed.
    Local(String),
    /// The restore of the assembled images failed.
    Restore(crate::server::restore::RestoreError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(why) => write!(f, "{why}"),
            Self::Unreachable { object, message } => write!(
                f,
                "the store failed on {object}: {message} (check the URL, the network and the \
                 credentials; nothing was restored)"
            ),
            Self::Missing { object } => write!(
                f,
                "{object} is missing from the store (removed or never pushed whole): push the \
                 checkpoint again; nothing was restored"
            ),
            Self::Refused(why) => write!(f, "refused: {why}"),
            Self::Local(why) => write!(f, "{why}"),
            Self::Restore(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<crate::server::restore::RestoreError> for Error {
    fn from(e: crate::server::restore::RestoreError) -> Self {
        Self::Restore(e)
    }
}

/// An opened store: its backend and the root under which checkpoints are.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    backend: Arc<dyn object_store::ObjectStore>,
    root: ObjectPath,
    /// The root URL, as given (without a trailing `/`).
    pub(crate) url: String,
}

/// A checkpoint's URL: `ROOT/checkpoints/<id>`.
pub(crate) fn split_checkpoint_url(url: &str) -> Result<(&str, &str), Error> {
    let bad = || {
        Error::Url(format!(
            "{url} is not a checkpoint's URL (ROOT/checkpoints/<64 hex digits>, as `selfdump \
             push` prints it)"
        ))
    };
    let (rest, id) = url.trim_end_matches('/').rsplit_once('/').ok_or_else(bad)?;
    let root = rest.strip_suffix("/checkpoints").ok_or_else(bad)?;
    if !format::is_hash(id) {
        return Err(bad());
    }
    Ok((root, id))
}

impl Store {
    /// Opens the store at `url` (`s3://BUCKET[/PREFIX]`, `gs://...`,
    /// `az://CONTAINER[/PREFIX]`, `file:///PATH`); `create` makes a
    /// `file://` root that does not exist yet.
    pub(crate) fn open(url: &str, create: bool) -> Result<Self, Error> {
        let url = url.trim_end_matches('/');
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| Error::Url(format!("{url}: not a URL (s3://BUCKET/PREFIX, ...)")))?;
        let bad = |e: object_store::Error| Error::Url(format!("{url}: {e}"));
        let (backend, prefix): (Arc<dyn object_store::ObjectStore>, &str) = match scheme {
            "file" => {
                if create {
                    std::fs::create_dir_all(rest)
                        .map_err(|e| Error::Local(format!("{rest}: {e}")))?;
                }
                let local =
                    object_store::local::LocalFileSystem::new_with_prefix(rest).map_err(bad)?;
                (Arc::new(local), "")
            }
            "s3" | "s3a" | "gs" | "az" | "azure" | "abfs" | "abfss" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let bucket_url = format!("{scheme}://{bucket}");
                (cloud(scheme, &bucket_url).map_err(bad)?, prefix)
            }
            other => {
                return Err(Error::Url(format!(
                    "{url}: unknown store scheme {other:?} (s3, gs, az or file)"
                )));
            }
        };
        Ok(Self {
            backend,
            root: ObjectPath::from(prefix),
            url: url.to_owned(),
        })
    }

    fn path(&self, name: &str) -> ObjectPath {
        self.root
            .parts()
            .chain(ObjectPath::from(name).parts())
            .collect()
    }

    fn failed(&self, name: &str, e: object_store::Error) -> Error {
        let object = format!("{}/{name}", self.url);
        match e {
            object_store::Error::NotFound { .. } => Error::Missing { object },
            e => Error::Unreachable {
                object,
                message: e.to_string(),
            },
        }
    }

    /// Whether object `name` exists (and its size).
    pub(crate) async fn size(&self, name: &str) -> Result<Option<u64>, Error> {
        match self.backend.head(&self.path(name)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed(name, e)),
        }
    }

    /// Object `name`, refused unread if larger than `cap` bytes.
    pub(crate) async fn get(&self, name: &str, cap: u64) -> Result<Vec<u8>, Error> {
        let got = self
            .backend
            .get_opts(&self.path(name), object_store::GetOptions::default())
            .await
            .map_err(|e| self.failed(name, e))?;
        if got.meta.size > cap {
            return Err(Error::Refused(format!(
                "{}/{name} is {} bytes, more than such an object can be ({cap}): not what was \
                 pushed",
                self.url, got.meta.size
            )));
        }
        let bytes = got.bytes().await.map_err(|e| self.failed(name, e))?;
        if bytes.len() as u64 > cap {
            return Err(Error::Refused(format!(
                "{}/{name} is larger than {cap} bytes",
                self.url
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Writes object `name`.
    pub(crate) async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), Error> {
        self.backend
            .put(&self.path(name), bytes.into())
            .await
            .map(drop)
            .map_err(|e| self.failed(name, e))
    }

    /// Removes object `name`.
    pub(crate) async fn delete(&self, name: &str) -> Result<(), Error> {
        self.backend
            .delete(&self.path(name))
            .await
            .map_err(|e| self.failed(name, e))
    }

    /// Uploads the file at `path` as object `name`, in parts (8 MiB, 8 at
    /// once): how one uploads plain files, for the benchmarks' baseline.
    pub(crate) async fn put_file(&self, name: &str, path: &std::path::Path) -> Result<(), Error> {
        use std::io::Read;
        const PART: usize = 8 << 20;
        let upload = self
            .backend
            .put_multipart(&self.path(name))
            .await
            .map_err(|e| self.failed(name, e))?;
        let mut write = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file = std::fs::File::open(path).map_err(|e| Error::Local(e.to_string()))?;
        let mut buf = vec![0u8; PART];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::Local(e.to_string()))?;
            if n == 0 {
                break;
            }
            write
                .wait_for_capacity(8)
                .await
                .map_err(|e| self.failed(name, e))?;
            write.write(&buf[..n]);
        }
        write.finish().await.map_err(|e| self.failed(name, e))?;
        Ok(())
    }

    /// The names of the objects under `prefix` (relative to the root).
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .list_sizes(prefix)
            .await?
            .into_iter()
            .map(|(n, _)| n)
            .collect())
    }

    /// The names and sizes of the objects under `prefix`.
    pub(crate) async fn list_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        use futures_lite::StreamExt;
        let mut listed = self.backend.list(Some(&self.path(prefix)));
        let mut names = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| self.failed(prefix, e))?;
            let parts: Vec<_> = meta.location.parts().collect();
            let skip = self.root.parts().count();
            let name: Vec<String> = parts[skip..]
                .iter()
                .map(|p| p.as_ref().to_owned())
                .collect();
            names.push((name.join("/"), meta.size));
        }
        Ok(names)
    }

    /// A checkpoint's URL in this store.
    pub(crate) fn checkpoint_url(&self, id: &str) -> String {
        format!("{}/checkpoints/{id}", self.url)
    }
}

/// Direct access to a store's objects, for this crate's tests (tampering
/// with what was pushed): not part of the API.
#[doc(hidden)]
pub mod raw {
    use super::{Error, Store, runtime::on_runtime};

    /// Object `name` under the store root `root`.
    pub fn get(root: &str, name: &str) -> Result<Vec<u8>, Error> {
        let (store, name) = (Store::open(root, true)?, name.to_owned());
        async_io::block_on(on_runtime(async move { store.get(&name, u64::MAX).await }))
    }

    /// Writes object `name` under `root`.
    pub fn put(root: &str, name: &str, bytes: Vec<u8>) -> Result<(), Error> {
        let (store, name) = (Store::open(root, true)?, name.to_owned());
        async_io::block_on(on_runtime(async move { store.put(&name, bytes).await }))
    }

    /// Removes object `name` under `root`.
    pub fn delete(root: &str, name: &str) -> Result<(), Error> {
        let (store, name) = (Store::open(root, true)?, name.to_owned());
        async_io::block_on(on_runtime(async move { store.delete(&name).await }))
    }

    /// Uploads a plain file as object `name` under `root` (in parts).
    pub fn put_file(root: &str, name: &str, path: &std::path::Path) -> Result<(), Error> {
        let (store, name, path) = (Store::open(root, true)?, name.to_owned(), path.to_owned());
        async_io::block_on(on_runtime(
            async move { store.put_file(&name, &path).await },
        ))
    }

    /// The objects under `root`/`prefix` and their sizes.
    pub fn list_sizes(root: &str, prefix: &str) -> Result<Vec<(String, u64)>, Error> {
        let (store, prefix) = (Store::open(root, true)?, prefix.to_owned());
        async_io::block_on(on_runtime(async move { store.list_sizes(&prefix).await }))
    }

    /// The objects under `root`/`prefix`, relative to `root`.
    pub fn list(root: &str, prefix: &str) -> Result<Vec<String>, Error> {
        let (store, prefix) = (Store::open(root, true)?, prefix.to_owned());
        async_io::block_on(on_runtime(async move { store.list(&prefix).await }))
    }
}

/// How long to wait for a connection, and how long to retry a failing
/// request, before the store counts as unreachable.
const CONNECT_TIMEOUT: &str = "5s";
const RETRY: object_store::RetryConfig = object_store::RetryConfig {
    backoff: object_store::BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(2),
        base: 2.0,
    },
    max_retries: 3,
    retry_timeout: Duration::from_secs(20),
};

/// A cloud backend for `bucket_url`, configured from the environment.
fn cloud(
    scheme: &str,
    bucket_url: &str,
) -> object_store::Result<Arc<dyn object_store::ObjectStore>> {
    use object_store::ClientConfigKey::ConnectTimeout;
    Ok(match scheme {
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(bucket_url)
                .with_config(
                    object_store::aws::AmazonS3ConfigKey::Client(ConnectTimeout),
                    CONNECT_TIMEOUT,
                )
                .with_retry(RETRY)
                .build()?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(bucket_url)
                .with_config(
                    object_store::gcp::GoogleConfigKey::Client(ConnectTimeout),
                    CONNECT_TIMEOUT,
                )
                .with_retry(RETRY)
                .build()?,
        ),
        _ => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(bucket_url)
                .with_config(
                    object_store::azure::AzureConfigKey::Client(ConnectTimeout),
                    CONNECT_TIMEOUT,
                )
                .with_retry(RETRY)
                .build()?,
        ),
    })
}
