//! Questions asked of CRIU outside dumps (its version, whether it can
//! track memory), each over a fresh `criu swrk`.

use super::Worker;
use super::criu::Criu;
use super::error::EngineError;
use super::rpc::{self, CriuReq, CriuResp, req_type};

impl Criu {
    /// Asks CRIU for its version over RPC: (major, minor, sublevel).
    pub async fn version(&self) -> Result<(i32, i32, i32), EngineError> {
        Worker::start(self)?.ask_version().await
    }

    /// Whether CRIU and the kernel can track memory changes (soft-dirty
    /// bits), which iterative pre-dumps need. Asked once per process.
    pub async fn can_track_memory(&self) -> bool {
        static ANSWER: async_lock::OnceCell<bool> = async_lock::OnceCell::new();
        *ANSWER
            .get_or_init(|| async { self.supports_mem_track().await.unwrap_or(false) })
            .await
    }

    /// Asks CRIU (`FEATURE_CHECK`) whether memory change tracking works here.
    pub async fn supports_mem_track(&self) -> Result<bool, EngineError> {
        let resp = self
            .ask(CriuReq {
                r#type: req_type::FEATURE_CHECK,
                features: Some(rpc::CriuFeatures {
                    mem_track: Some(true),
                }),
                ..Default::default()
            })
            .await?;
        Ok(resp.success && resp.features.and_then(|f| f.mem_track).unwrap_or(false))
    }

    /// One request to a fresh `criu swrk`, and its answer.
    async fn ask(&self, req: CriuReq) -> Result<CriuResp, EngineError> {
        Worker::start(self)?.ask(req).await
    }
}

impl Worker {
    /// Asks this worker for CRIU's version (its one request).
    pub(super) async fn ask_version(self) -> Result<(i32, i32, i32), EngineError> {
        let resp = self
            .ask(CriuReq {
                r#type: req_type::VERSION,
                ..Default::default()
            })
            .await?;
        match resp.version {
            Some(v) if resp.success => {
                Ok((v.major_number, v.minor_number, v.sublevel.unwrap_or(0)))
            }
            _ => Err(EngineError::Failed(resp.cr_errmsg)),
        }
    }
}
