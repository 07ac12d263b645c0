//! The JetStream log client against a real 3-server nats-server cluster on loopback.
//!
//! Built only with `--features cluster`. Needs the pinned nats-server: `bash scripts/cluster.sh`
//! installs it and runs these; without it every test fails and says how to get it.

mod engine;
mod log;
mod nats;
mod presence;
mod retention;
