//! End-to-end tests: the real `docker-flow-proxy` binary, a real `consul agent -dev`, real
//! upstream servers, all on 127.0.0.1. One test binary, so the suite is compiled and linked
//! once rather than once per file; each test starts and stops its own processes.
//!
//! These tests need `consul` on PATH (README.md, "Getting Consul", says where to get it);
//! without it the Consul tests fail and say so, they never pass silently.

#![allow(unreachable_pub, reason = "test support is `pub` for the test modules, not a public API")]

mod support;

mod access;
mod acme;
mod admin;
mod admin_auth;
mod affinity;
mod cli;
mod client_certs;
mod compression;
mod conditions;
mod consul_acl;
mod consul_cluster;
mod consul_load;
mod dashboard;
mod data_plane;
mod destinations;
mod engines;
mod env_services;
mod follow;
mod global_users;
mod h2_attacks;
mod hostile;
mod http1;
mod instance_limit;
mod limits;
mod options;
mod proxy_protocol;
mod reconfigure_burst;
mod redirects;
mod replicas;
mod resilience;
mod restore;
mod seed;
mod ship;
mod sni;
mod standalone;
mod tcp;
mod tidy;
mod tls;
