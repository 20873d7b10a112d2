//! The streaming encoder behind `compressionAlgo`: one small type both engines feed the
//! instance's body through, piece by piece, so a compressed response is never buffered
//! whole.
//!
//! Each piece is compressed and flushed at once (gzip/deflate: a sync flush; brotli: its
//! flush operation): the client gets what the instance has sent so far (a stream of events
//! stays a stream), at the cost of a few bytes per piece. gzip and deflate use level 1,
//! HAProxy's default (`tune.comp.maxlevel 1`): most of the saving on text for a fraction of
//! the CPU of higher levels, which matters on the data plane's threads. Brotli's settings are
//! at [`BROTLI_QUALITY`] and [`BROTLI_WINDOW`].
//! Whether to compress at all is the rules' decision (`rules::compression`), not this
//! module's.

use std::io::Write as _;

use dfp_routing::CompressionAlgo;
use flate2::write::{GzEncoder, ZlibEncoder};

/// The gzip/deflate compression level: HAProxy's default.
const LEVEL: u32 = 1;

/// Brotli's quality, 4: the usual choice for on-the-fly compression (0 to 11; 5 and above
/// cost several times the CPU). Quality 1 keeps no context across flushes (each flushed piece
/// is compressed on its own) and did worse than gzip level 1 on JSON sent in 1 KiB pieces;
/// 2 to 4 keep the window across flushes, 4 packed that JSON 30-45% smaller than gzip level
/// 1 for about twice its CPU.
const BROTLI_QUALITY: u32 = 4;

/// Brotli's window, 2^18 bytes (256 KiB, eight times deflate's 32 KiB). Its ring buffer is
/// twice the window and is allocated whole on a response's second piece, for every compressed
/// response in flight: about 1.3 MB each at 18, against 8.8 MB at 22 (brotli's default), which
/// on the same JSON packed no smaller.
const BROTLI_WINDOW: u32 = 18;

/// The brotli encoder's output buffer: what it writes out at once when it fills.
const BROTLI_BUFFER: usize = 4096;

/// A body's encoder: input in, compressed bytes out, as they become available.
#[allow(missing_debug_implementations, reason = "flate2's and brotli's encoders are opaque state")]
pub(crate) enum Encoder {
    Gzip(GzEncoder<Vec<u8>>),
    Deflate(ZlibEncoder<Vec<u8>>),
    /// Boxed: its state is a few kilobytes, moved with the body otherwise.
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
}

impl Encoder {
    pub(crate) fn new(algo: CompressionAlgo) -> Self {
        let level = flate2::Compression::new(LEVEL);
        match algo {
            CompressionAlgo::Gzip => Encoder::Gzip(GzEncoder::new(Vec::new(), level)),
            CompressionAlgo::Deflate => Encoder::Deflate(ZlibEncoder::new(Vec::new(), level)),
            CompressionAlgo::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
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
            Encoder::Brotli(e) => {
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
            Encoder::Gzip(e) => e.finish().unwrap_or_default(),
            Encoder::Deflate(e) => e.finish().unwrap_or_default(),
            // Ends the brotli stream (its finish operation) before handing the Vec back.
            Encoder::Brotli(e) => e.into_inner(),
        };
        out.extend_from_slice(&rest);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    /// Decodes `bytes` as far as they go: everything for a whole stream; for a stream cut
    /// after a flush, what was flushed (the decoder then stops on the missing end).
    fn decode(algo: CompressionAlgo, bytes: &[u8]) -> (Vec<u8>, std::io::Result<usize>) {
        let mut decoded = Vec::new();
        let read = match algo {
            CompressionAlgo::Gzip => flate2::read::GzDecoder::new(bytes).read_to_end(&mut decoded),
            CompressionAlgo::Deflate => {
                flate2::read::ZlibDecoder::new(bytes).read_to_end(&mut decoded)
            }
            CompressionAlgo::Brotli => {
                // One byte at a time: the decoder gives what it has before it finds the cut.
                let mut reader = brotli::Decompressor::new(bytes, 4096);
                let mut byte = [0u8];
                loop {
                    match reader.read(&mut byte) {
                        Ok(0) => break Ok(decoded.len()),
                        Ok(_) => decoded.push(byte[0]),
                        Err(err) => break Err(err),
                    }
                }
            }
        };
        (decoded, read)
    }

    #[test]
    fn pieces_decode_to_the_original_and_each_is_readable_at_once() {
        let text: Vec<u8> =
            (0..200_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        for algo in [CompressionAlgo::Gzip, CompressionAlgo::Deflate, CompressionAlgo::Brotli] {
            let mut encoder = Encoder::new(algo);
            let mut out = Vec::new();
            encoder.compress(b"first piece", &mut out);
            // What the client has after the first piece already decodes to it.
            assert_eq!(decode(algo, &out).0, b"first piece", "{algo:?}");
            encoder.compress(b", second", &mut out);
            assert_eq!(decode(algo, &out).0, b"first piece, second", "{algo:?}");
            for piece in text.chunks(16 * 1024) {
                encoder.compress(piece, &mut out);
            }
            encoder.finish(&mut out);
            assert!(out.len() < text.len() / 3, "{algo:?}: {} bytes", out.len());
            let (decoded, read) = decode(algo, &out);
            read.expect("decodes");
            assert_eq!(&decoded[..19], b"first piece, second");
            assert!(decoded[19..] == text[..], "{algo:?}: decodes to the original");
        }
    }

    /// A body that ends before its first piece still makes a whole (empty) stream.
    #[test]
    fn an_empty_body_is_a_valid_stream() {
        for algo in [CompressionAlgo::Gzip, CompressionAlgo::Deflate, CompressionAlgo::Brotli] {
            let mut out = Vec::new();
            Encoder::new(algo).finish(&mut out);
            let (decoded, read) = decode(algo, &out);
            read.expect("decodes");
            assert!(decoded.is_empty(), "{algo:?}");
        }
    }
}
