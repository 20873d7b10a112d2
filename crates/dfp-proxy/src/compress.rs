//! The streaming encoder behind `compressionAlgo`: one small type both engines feed the
//! instance's body through, piece by piece, so a compressed response is never buffered
//! whole.
//!
//! Each piece is compressed and sync-flushed at once: the client gets what the instance has
//! sent so far (a stream of events stays a stream), at the cost of a few bytes per piece.
//! Level 1, HAProxy's default (`tune.comp.maxlevel 1`): most of the saving on text for a
//! fraction of the CPU of higher levels, which matters on the data plane's threads.
//! Whether to compress at all is the rules' decision (`rules::compression`), not this
//! module's.

use std::io::Write as _;

use dfp_routing::CompressionAlgo;
use flate2::write::{GzEncoder, ZlibEncoder};

/// The compression level: HAProxy's default.
const LEVEL: u32 = 1;

/// A body's encoder: input in, compressed bytes out, as they become available.
#[allow(missing_debug_implementations, reason = "flate2's encoders are opaque state")]
pub(crate) enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    Deflate(ZlibEncoder<Vec<u8>>),
}

impl Encoder {
    pub(crate) fn new(algo: CompressionAlgo) -> Self {
        let level = flate2::Compression::new(LEVEL);
        match algo {
            CompressionAlgo::Gzip => Encoder::Gzip(GzEncoder::new(Vec::new(), level)),
            CompressionAlgo::Deflate => Encoder::Deflate(ZlibEncoder::new(Vec::new(), level)),
        }
    }

    /// Compresses `input` and appends everything the client can decode so far to `out`.
    pub(crate) fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // Writes into a Vec cannot fail.
        let sink = match self {
            Encoder::Gzip(e) => {
                let _ = e.write_all(input);
                let _ = e.flush();
                e.get_mut()
            }
            Encoder::Deflate(e) => {
                let _ = e.write_all(input);
                let _ = e.flush();
                e.get_mut()
            }
        };
        out.append(sink);
    }

    /// Ends the stream: appends the last bytes (and gzip's trailer) to `out`.
    pub(crate) fn finish(self, out: &mut Vec<u8>) {
        let rest = match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Deflate(e) => e.finish(),
        };
        out.extend_from_slice(&rest.unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    #[test]
    fn pieces_decode_to_the_original_and_each_is_readable_at_once() {
        let text: Vec<u8> =
            (0..200_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        for algo in [CompressionAlgo::Gzip, CompressionAlgo::Deflate] {
            let mut encoder = Encoder::new(algo);
            let mut out = Vec::new();
            encoder.compress(b"first piece", &mut out);
            // What the client has after the first piece already decodes to it.
            let mut partial = Vec::new();
            let _ = match algo {
                CompressionAlgo::Gzip => {
                    flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut partial)
                }
                CompressionAlgo::Deflate => {
                    flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut partial)
                }
            };
            assert_eq!(partial, b"first piece", "{algo:?}");
            for piece in text.chunks(16 * 1024) {
                encoder.compress(piece, &mut out);
            }
            encoder.finish(&mut out);
            assert!(out.len() < text.len() / 3, "{algo:?}: {} bytes", out.len());
            let mut decoded = Vec::new();
            match algo {
                CompressionAlgo::Gzip => {
                    flate2::read::GzDecoder::new(&out[..]).read_to_end(&mut decoded)
                }
                CompressionAlgo::Deflate => {
                    flate2::read::ZlibDecoder::new(&out[..]).read_to_end(&mut decoded)
                }
            }
            .expect("decodes");
            assert_eq!(&decoded[..11], b"first piece");
            assert_eq!(&decoded[11..], &text[..]);
        }
    }
}
