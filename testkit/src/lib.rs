//! What the tests, benchmarks and the load generator share, kept out of the
//! services: the simulated fleet of players ([`fleet`]), a fresh PostgreSQL
//! database per test ([`db`]) and the Kafka broker of the tests ([`broker`]),
//! each server found or started by the tests themselves.
#![forbid(unsafe_code)]

pub mod broker;
pub mod db;
pub mod fleet;
mod local;
