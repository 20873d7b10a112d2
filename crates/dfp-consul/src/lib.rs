//! The only crate that talks to Consul.
//!
//! It owns the HTTP conversation with one or more Consul agents: which URL to call, how long
//! to wait, which agent to try next when one is down, and how to read Consul's JSON. It hands
//! back plain values ([`Instance`]); Consul's own JSON types stay private to this crate.
//!
//! With Consul's ACLs on, it sends the operator's token as `X-Consul-Token` on every call
//! (never in a URL, never in a log or a `Debug`), and turns a 403 into
//! [`ConsulError::PermissionDenied`], which names the call and the rule the token lacks.
//!
//! It must not know about routes, tables or the proxy: callers decide what an instance list
//! means. It never retries forever: every call is bounded by the client's timeout per agent.

#![forbid(unsafe_code)]

mod client;
mod model;

pub use client::{
    ConsulClient, ConsulError, ConsulToken, Indexed, KvEntry, Registration, ServiceLookup,
    SessionEnd,
};
pub use model::{CheckState, Instance};
