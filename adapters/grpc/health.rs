//! `grpc.health.v1.Health` on the service port (tonic-health): SERVING for the whole server
//! (`""`) and for each chat service while the server runs, NOT_SERVING as soon as shutdown
//! begins, so a load balancer that watches health drains the server before its streams end.
//!
//! tonic-health's service is wrapped for one reason: its `Watch` streams never end on their
//! own, and an open stream holds the server's graceful shutdown open. Wrapped, a watcher first
//! receives NOT_SERVING, then its stream ends with UNAVAILABLE like every other stream.

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use super::confab_service::ResponseStream;
use super::proto::{chat::chat_service_server, confab_v1::chat_server};
use super::shutdown::UntilShutdown;

/// Every name health is reported for: the whole server (`""`, as the health protocol defines)
/// and each service this server runs.
pub const HEALTH_SERVICE_NAMES: [&str; 3] = ["", chat_server::SERVICE_NAME, chat_service_server::SERVICE_NAME];

/// Sets the health the service reports.
#[derive(Clone, Debug)]
pub struct ServerHealth {
    reporter: HealthReporter,
}

impl ServerHealth {
    /// Health reporting SERVING for every name in [`HEALTH_SERVICE_NAMES`], and the service
    /// that serves it, whose `Watch` streams end when `shutdown` is cancelled.
    pub async fn serving(shutdown: &CancellationToken) -> (Self, HealthServer<HealthUntilShutdown>) {
        let health = Self { reporter: HealthReporter::new() };
        health.set_all(ServingStatus::Serving).await;
        let service = HealthUntilShutdown {
            inner: HealthService::from_health_reporter(health.reporter.clone()),
            shutdown: shutdown.clone(),
        };
        (health, HealthServer::new(service))
    }

    /// Reports NOT_SERVING for every name: shutdown has begun.
    pub async fn not_serving(&self) {
        self.set_all(ServingStatus::NotServing).await;
    }

    async fn set_all(&self, status: ServingStatus) {
        for name in HEALTH_SERVICE_NAMES {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// tonic-health's service, with `Watch` streams that end at shutdown.
#[derive(Debug)]
pub struct HealthUntilShutdown {
    inner: HealthService,
    shutdown: CancellationToken,
}

#[tonic::async_trait]
impl Health for HealthUntilShutdown {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = ResponseStream<HealthCheckResponse>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        // Ready statuses first: the NOT_SERVING set just before shutdown must reach the watcher.
        Ok(Response::new(Box::pin(UntilShutdown::ready_first(statuses, &self.shutdown))))
    }
}
