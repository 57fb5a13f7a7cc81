//! The quality chain of Filière: the gavage and SQAL models, grading, the
//! store and the supervisor of the simulator tasks.
//!
//! Types shared with the browser (parameters, grades, views, events) build
//! everywhere, including WASM. Everything that needs a database, a runtime or
//! an OS random source sits behind the `server` feature.

pub mod grade;
pub mod params;
pub mod token;
pub mod views;

#[cfg(feature = "server")]
pub mod bus;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod gavage;
#[cfg(feature = "server")]
pub mod group_commit;
#[cfg(feature = "server")]
pub mod ingest;
#[cfg(feature = "server")]
pub mod ledger;
#[cfg(feature = "server")]
pub mod meals;
#[cfg(feature = "server")]
pub mod monitor;
#[cfg(feature = "server")]
pub mod qr;
#[cfg(feature = "server")]
pub mod relay;
#[cfg(feature = "server")]
pub mod services;
#[cfg(feature = "server")]
pub mod sqal;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod supervisor;
#[cfg(feature = "server")]
pub mod time;
