//! The seam through which the control plane opens and closes TCP services' listeners.
//!
//! Why a trait here: a `reqMode=tcp` reconfigure must learn whether its `srcPort` can be
//! listened on *before* it publishes anything (a port the proxy cannot bind is a 400 that
//! changes nothing), yet listening sockets are the data plane's, and this crate must not
//! depend on `dfp-proxy` (dependencies point one way; the two planes share only the table
//! handle). So the controller asks through [`TcpPorts`], and the binary, which sees both
//! crates, implements it with the data plane's listener host. Which service a port leads to
//! is never said here: that is in the published table, looked up per connection.
//!
//! The controller calls, under its lock: [`TcpPorts::bind`] before it stores and publishes
//! (so a failure changes nothing), [`TcpPorts::serve`] once the table routing the port is
//! live, and [`TcpPorts::close`] once a table without the port is live (remove, or a
//! reconfigure that moved the service to another port).

/// Opens, serves and closes the listening sockets of TCP services.
pub trait TcpPorts: Send + Sync + std::fmt::Debug + 'static {
    /// Binds `port` (on the proxy's listen address) unless it is bound already. Returns
    /// whether it was bound by this call: the caller closes it again if its change fails.
    fn bind(&self, port: u16) -> std::io::Result<bool>;
    /// Starts accepting on a bound `port` (a no-op when it accepts already).
    fn serve(&self, port: u16);
    /// Stops accepting on `port` at once; its open connections go on until they end or
    /// `--shutdown-grace` has passed. A no-op for a port that is not bound.
    fn close(&self, port: u16);
    /// Whether `port` is bound and accepting.
    fn is_listening(&self, port: u16) -> bool;
}

/// The ports the proxy itself listens on (HTTP, HTTPS, admin), by listener name: a `srcPort`
/// among them is a 409, whatever the OS would say, except the HTTPS port for `reqMode=sni`
/// services, which share its listener (their connections are picked out by server name
/// before TLS is ended there).
#[derive(Debug, Clone, Default)]
pub struct ReservedPorts {
    pub listeners: Vec<(u16, &'static str)>,
    /// The HTTPS listener's port, when the proxy has one.
    pub https: Option<u16>,
}

impl ReservedPorts {
    /// The listener that owns `port`, if one does.
    pub fn owner(&self, port: u16) -> Option<&'static str> {
        self.listeners.iter().find(|(p, _)| *p == port).map(|(_, name)| *name)
    }
}
