//! Compiler for the PowerDNS LUA-record subset: body text to a typed rule, at config load.
//!
//! STUB: being written.
