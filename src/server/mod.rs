//! The packet path: sockets and worker threads, the UDP front end on batched syscalls, TCP
//! connections, and the per-query decision shared by UDP and TCP.

pub(crate) mod listener;
pub mod pipeline;
pub mod signing;
pub(crate) mod udp_batch;
pub mod udp_front;
