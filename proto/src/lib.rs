//! The wire contract of the heartbeat mesh: package `heartbeat.v1`.
#![allow(clippy::all, clippy::pedantic)]

pub mod v1 {
    tonic::include_proto!("heartbeat.v1");

    /// Encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("heartbeat_descriptor");
}

pub use prost_types::Timestamp;
