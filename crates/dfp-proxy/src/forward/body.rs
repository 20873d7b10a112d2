//! The instance's response body as the HTTP/2 engine hands it to hyper: read from the
//! instance's connection (decoded from chunked framing) as hyper asks for it, and, for a
//! compressed response, passed through the encoder piece by piece. Apart from `forward.rs`,
//! which sends the request and reads the response head.

use super::*;

/// An instance's response body, read from its connection as hyper asks for it; the
/// connection goes back to this thread's pool when the body ended exactly where the bytes
/// read ended (a body dropped early takes its connection with it: it may be mid-message).
pub(crate) struct InstanceBody {
    pub(super) stream: Option<TcpStream>,
    /// Bytes read and not yet handed on.
    pub(super) buf: BytesMut,
    pub(super) framing: Framing,
    /// Of a `Content-Length` body, the bytes still to hand on.
    pub(super) remaining: u64,
    pub(super) scanner: ChunkedScanner,
    /// The chunked body's trailer section as read, until it goes out as a trailers frame.
    pub(super) trailers: Vec<u8>,
    pub(super) reusable: bool,
    pub(super) connector: Connector,
    pub(super) addr: SocketAddr,
    pub(super) hello: Option<ProxyHello>,
    pub(super) done: bool,
    /// The request's place on the instance (`instanceMaxConn`), given back at the body's end.
    pub(super) slot: Option<dfp_routing::InstanceSlot>,
}

impl std::fmt::Debug for InstanceBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceBody").field("framing", &self.framing).finish_non_exhaustive()
    }
}

impl InstanceBody {
    /// At the body's end: the connection goes back if nothing was read past it.
    pub(super) fn finish_if_done(&mut self) {
        if self.done {
            self.slot = None;
            if let Some(stream) = self.stream.take() {
                if self.reusable && self.buf.is_empty() {
                    self.connector.give_back(self.addr, stream, self.hello);
                }
            }
        }
    }

    /// The next data out of `buf`, by the framing; `None` when more must be read.
    fn take_data(&mut self) -> Result<Option<Bytes>, io::Error> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        match self.framing {
            Framing::Empty => Ok(None),
            Framing::UntilClose => Ok(Some(self.buf.split().freeze())),
            Framing::Length(_) => {
                let take = usize::try_from(self.remaining)
                    .map_or(self.buf.len(), |r| r.min(self.buf.len()));
                self.remaining -= take as u64;
                self.done = self.remaining == 0;
                Ok(Some(self.buf.split_to(take).freeze()))
            }
            Framing::Chunked => {
                let mut data = BytesMut::new();
                let input = &self.buf[..];
                let trailers = &mut self.trailers;
                let scan = self
                    .scanner
                    .feed_parts(
                        input,
                        |range| data.extend_from_slice(&input[range]),
                        |range| trailers.extend_from_slice(&input[range]),
                    )
                    .map_err(io::Error::other)?;
                let consumed = match scan {
                    Scan::Done(end) => {
                        self.done = true;
                        end
                    }
                    Scan::NeedMore => self.buf.len(),
                };
                self.buf.advance(consumed);
                Ok(Some(data.freeze()))
            }
        }
    }
}

impl http_body::Body for InstanceBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                this.finish_if_done();
                // The trailers, if the instance sent any, after the last DATA frame.
                let section = std::mem::take(&mut this.trailers);
                return Poll::Ready(trailers::header_map(&section).map(|t| Ok(Frame::trailers(t))));
            }
            match this.take_data() {
                Err(err) => return Poll::Ready(Some(Err(err))),
                Ok(Some(data)) if !data.is_empty() => {
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(_) => {}
            }
            if this.done {
                continue;
            }
            let Some(stream) = this.stream.as_mut() else { return Poll::Ready(None) };
            this.buf.reserve(16 * 1024);
            let got = loop {
                match stream.try_read_buf(&mut this.buf) {
                    Ok(got) => break got,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        ready!(stream.poll_read_ready(cx))?;
                    }
                    Err(err) => return Poll::Ready(Some(Err(err))),
                }
            };
            if got == 0 {
                this.stream = None;
                if this.framing == Framing::UntilClose {
                    this.done = true;
                    return Poll::Ready(None);
                }
                return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.trailers.is_empty()
    }
}

/// An instance's body compressed as hyper asks for it: each DATA piece [`InstanceBody`]
/// gives goes through the encoder at once and what it gives comes out as one DATA frame
/// (nothing is held back for a later piece); the encoder's end is the last DATA frame, and
/// the instance's trailers follow it, less those compression makes false
/// ([`trailers::drop_invalidated`]). The connection goes back to the pool exactly as the inner
/// body says.
pub(crate) struct CompressedBody {
    pub(super) inner: InstanceBody,
    /// `None` once the stream has ended (or failed).
    pub(super) encoder: Option<Encoder>,
    /// The instance's trailers, held until the encoder's end has gone out.
    pub(super) trailers: Option<HeaderMap>,
}

impl std::fmt::Debug for CompressedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompressedBody").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl http_body::Body for CompressedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(encoder) = this.encoder.as_mut() else {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            };
            let mut out = Vec::new();
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    match frame.into_data() {
                        Ok(data) => encoder.compress(&data, &mut out),
                        Err(frame) => {
                            if let Ok(mut fields) = frame.into_trailers() {
                                trailers::drop_invalidated(&mut fields);
                                this.trailers = (!fields.is_empty()).then_some(fields);
                            }
                        }
                    }
                    if out.is_empty() {
                        continue;
                    }
                }
                Some(Err(err)) => {
                    this.encoder = None;
                    return Poll::Ready(Some(Err(err)));
                }
                None => {
                    if let Some(encoder) = this.encoder.take() {
                        encoder.finish(&mut out);
                    }
                }
            }
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.encoder.is_none() && self.trailers.is_none()
    }
}
