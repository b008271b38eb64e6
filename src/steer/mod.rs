//! In-process answers: the LUA-subset compiler, the record table and its evaluation, PowerDNS
//! hashes, GeoIP and the probe pool that feeds health.

pub mod geo;
pub mod hash;
pub mod lua;
pub mod probes;
pub mod records;
