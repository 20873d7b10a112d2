//! The one set of rules every proxied exchange follows, whichever engine carries it.
//!
//! Why one module: the proxy has two HTTP engines (its own HTTP/1 codec in `h1/` for plain
//! and TLS connections, and hyper's HTTP/2 server in `tls.rs` + `forward.rs`). Every decision
//! about an exchange is made here, once, over plain `(name, value)` field lists that both
//! engines can give: which request and response fields pass (hop-by-hop, names listed in
//! `Connection`, fields the proxy writes itself), the forwarded fields, the `Host` check, the
//! framing checks of RFC 9112 §6 (what a proxy must refuse or remove), a service's policy
//! ([`admit`]: redirect, authentication, rewrite, header edits, timeouts), who is at fault
//! when an attempt fails ([`Failure`]) and the access-log and metrics record ([`record`]).
//!
//! [`admit`] destructures [`ServicePolicy`] without `..`, and engines destructure its
//! [`Admitted`] answer the same way: a new policy field does not compile until this module
//! says what it means and every engine says what it does with it.
//!
//! The rules are split by what they are about: request fields and targets (`request.rs`),
//! response fields and framing (`response.rs`), a service's policy and routing
//! (`policy.rs`), failures, retries and the record (`failure.rs`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dfp_routing::{Backend, HeaderEdits, InstanceSlot, ServicePolicy, TableHandle, Upstream};
use http::header::HeaderValue;
use http::StatusCode;

use crate::error::ProxyError;
use crate::forward::now_ms;
use crate::path;

mod failure;
mod policy;
mod request;
mod response;

pub(crate) use failure::*;
pub(crate) use policy::*;
pub(crate) use request::*;
pub(crate) use response::*;

/// The largest request or response head (start line and fields) accepted, on every request of
/// every connection; a larger request head gets 431.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Field lines read per head; more gets 431 (requests) or 502 (responses).
pub(crate) const MAX_HEADERS: usize = 100;

/// The longest the proxy waits for an instance's `100 Continue` before telling the client to
/// send its body anyway (what curl waits before sending it unasked).
pub(crate) const EXPECT_WAIT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Head writers: where a head is written, field by field, into a sink

/// Where head fields go: raw HTTP/1 bytes, or a header map for hyper.
pub(crate) trait FieldSink {
    fn field(&mut self, name: &str, value: &[u8]);
}

impl FieldSink for Vec<u8> {
    fn field(&mut self, name: &str, value: &[u8]) {
        self.extend_from_slice(name.as_bytes());
        self.extend_from_slice(b": ");
        self.extend_from_slice(value);
        self.extend_from_slice(b"\r\n");
    }
}

impl FieldSink for http::HeaderMap {
    fn field(&mut self, name: &str, value: &[u8]) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value))
        {
            self.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests;
