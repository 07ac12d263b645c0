//! `grpc.health.v1.Health` on the service port (tonic-health): SERVING for the whole server
//! (`""`) and for each chat service while the server runs, NOT_SERVING as soon as shutdown
//! begins, so a load balancer that watches health drains the server before its streams end.
//! It is also NOT_SERVING while the engine cannot serve ([`Engine::health`]): its store fails
//! to commit (a full disk), or its registry has stopped. `Check` asks the engine each time;
//! `Watch` hears of a change within [`ENGINE_HEALTH_POLL_INTERVAL`].
//!
//! tonic-health's service is wrapped for one reason: its `Watch` streams never end on their
//! own, and an open stream holds the server's graceful shutdown open. Wrapped, a watcher first
//! receives NOT_SERVING, then its stream ends with UNAVAILABLE like every other stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use confab_actors::{Engine, EngineHealth};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};

use super::confab_service::ResponseStream;
use super::shutdown::UntilShutdown;
use crate::api::shutdown::ShutdownSignal;
use crate::proto::{chat::chat_service_server, confab_v1::chat_server};

/// Every name health is reported for: the whole server (`""`, as the health protocol defines)
/// and each service this server runs.
pub const HEALTH_SERVICE_NAMES: [&str; 3] = ["", chat_server::SERVICE_NAME, chat_service_server::SERVICE_NAME];

/// How often the engine's health is read for `Watch` streams: a failing store or a stopped
/// engine reaches watchers within this.
pub const ENGINE_HEALTH_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Sets the health the service reports.
#[derive(Clone, Debug)]
pub struct ServerHealth {
    reporter: HealthReporter,
    /// Set once shutdown began: from then on nothing turns health back to SERVING.
    shutting_down: Arc<AtomicBool>,
}

impl ServerHealth {
    /// Health reporting SERVING for every name in [`HEALTH_SERVICE_NAMES`] while `engine` can
    /// serve, and the service that serves it, whose `Watch` streams end when `shutdown` is
    /// cancelled.
    pub async fn serving(shutdown: &CancellationToken, engine: Engine) -> (Self, HealthServer<HealthUntilShutdown>) {
        let health = Self { reporter: HealthReporter::new(), shutting_down: Arc::new(AtomicBool::new(false)) };
        health.set_all(status_of(&engine.health())).await;
        tokio::spawn(health.clone().follow(engine.clone(), shutdown.clone()));
        let service = HealthUntilShutdown {
            inner: HealthService::from_health_reporter(health.reporter.clone()),
            engine,
            shutting_down: Arc::clone(&health.shutting_down),
            shutdown: ShutdownSignal::new(shutdown),
        };
        (health, HealthServer::new(service))
    }

    /// Reports NOT_SERVING for every name: shutdown has begun.
    pub async fn not_serving(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.set_all(ServingStatus::NotServing).await;
    }

    /// Carries the engine's health over to the reporter (and so to `Watch` streams) until
    /// shutdown.
    async fn follow(self, engine: Engine, shutdown: CancellationToken) {
        let mut reported = status_of(&engine.health());
        let mut ticks = tokio::time::interval(ENGINE_HEALTH_POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let health = engine.health();
            let status = status_of(&health);
            if status != reported && !self.shutting_down.load(Ordering::Relaxed) {
                match &health {
                    EngineHealth::Serving => tracing::info!("health: SERVING again"),
                    unhealthy => tracing::warn!(health = ?unhealthy, "health: NOT_SERVING"),
                }
                self.set_all(status).await;
                reported = status;
            }
        }
    }

    async fn set_all(&self, status: ServingStatus) {
        for name in HEALTH_SERVICE_NAMES {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// tonic-health's service, with `Watch` streams that end at shutdown.
pub struct HealthUntilShutdown {
    inner: HealthService,
    /// Asked on every `Check`, so a change shows at once rather than at the next poll.
    engine: Engine,
    /// Once set, `Check` answers what the reporter says (NOT_SERVING), whatever the engine says.
    shutting_down: Arc<AtomicBool>,
    shutdown: ShutdownSignal,
}

impl std::fmt::Debug for HealthUntilShutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthUntilShutdown").field("engine", &self.engine.health()).finish_non_exhaustive()
    }
}

#[tonic::async_trait]
impl Health for HealthUntilShutdown {
    async fn check(&self, request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        // tonic-health answers NOT_FOUND for a name it does not report.
        let response = self.inner.check(request).await?;
        if self.shutting_down.load(Ordering::Relaxed) {
            return Ok(response);
        }
        let status = match status_of(&self.engine.health()) {
            ServingStatus::Serving => tonic_health::pb::health_check_response::ServingStatus::Serving,
            _ => tonic_health::pb::health_check_response::ServingStatus::NotServing,
        };
        Ok(Response::new(HealthCheckResponse { status: status.into() }))
    }

    type WatchStream = ResponseStream<HealthCheckResponse>;

    async fn watch(&self, request: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let statuses = self.inner.watch(request).await?.into_inner();
        // Ready statuses first: the NOT_SERVING set just before shutdown must reach the watcher.
        Ok(Response::new(Box::pin(UntilShutdown::ready_first(statuses, &self.shutdown))))
    }
}

/// The status a health check reports for the engine's health.
fn status_of(health: &EngineHealth) -> ServingStatus {
    if health.is_serving() { ServingStatus::Serving } else { ServingStatus::NotServing }
}
