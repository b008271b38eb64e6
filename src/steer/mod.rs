//! In-process answers: the LUA-subset compiler, the record table and its evaluation, PowerDNS
//! hashes, GeoIP and the probe pool that feeds health.

pub(crate) mod generate;
pub mod geo;
pub(crate) mod hash;
pub(crate) mod lua;
pub mod probes;
pub mod records;
pub mod wildcard;
