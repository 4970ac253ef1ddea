//! What operators see: counters every worker adds to, the admin endpoint that serves them,
//! and the access log. Depends only on leaf types, so every layer may report here.

pub mod access_log;
pub mod admin;
pub mod metrics;
