//! GeoIP: a MaxMind City-format database read fully into memory, for `pickclosest`.
//!
//! STUB: the API below is the contract; the implementation is being written.

use std::net::IpAddr;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("{path}: {message}")]
    Open { path: String, message: String },
}

/// Where an address is, and the prefix length of the mmdb network that said so.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub prefix_len: u8,
}

pub struct GeoDb {
    _private: (),
}

impl GeoDb {
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        Err(GeoError::Open {
            path: path.display().to_string(),
            message: "not implemented".into(),
        })
    }

    /// None when the address is not in the database or its record has no location.
    pub fn locate(&self, _ip: IpAddr) -> Option<Location> {
        None
    }
}

impl GeoDb {
    pub fn build_epoch(&self) -> u64 {
        0
    }
}
