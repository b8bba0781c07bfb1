//! `reaper.Provider/list`: every configured provider with its kind, model, status, credentials,
//! measured latency and, when it is not plainly available, why. Answered on the loop from the
//! pool's state, which background probes and the calls themselves keep current.

use std::sync::Arc;

use reaper_core::schema::ProviderListResponse;
use reaper_providers::Pool;

/// The Provider service.
#[derive(Debug)]
pub struct ProviderService {
    pool: Arc<Pool>,
}

impl ProviderService {
    /// Lists `pool`'s providers.
    pub fn new(pool: Arc<Pool>) -> ProviderService {
        ProviderService { pool }
    }

    /// The answer now.
    pub fn list(&self) -> ProviderListResponse {
        ProviderListResponse {
            providers: self.pool.list(),
        }
    }
}
