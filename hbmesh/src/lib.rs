//! The `hbmesh` operator binary as a library, so end-to-end tests start the
//! very same all-in-one mesh ([`mesh::start`]) that `hbmesh up` runs.
#![deny(unsafe_code)]

pub mod catalog;
pub mod demo;
pub mod erase;
pub mod mesh;
pub mod sessionize;
pub mod simulate;
pub mod token;
pub mod up;
