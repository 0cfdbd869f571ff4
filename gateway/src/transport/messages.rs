//! Each method's largest request message, enforced on the gRPC length prefix.
//!
//! gRPC frames every message as a compressed flag, a 4-byte big-endian length, then the
//! message. [`MessageLimits`] reads the prefixes as the body streams by and ends the call with
//! RESOURCE_EXHAUSTED (as gRPC's own implementations do for an oversized message) the moment
//! one announces more than its method allows: nothing of the message itself is buffered, so a
//! 100 MB request costs the gateway a few bytes, not 100 MB. tonic's own decoder limit is set
//! to the largest of these, so this check always comes first.
//!
//! Only gRPC requests are looked at; the REST schema registry API on the same port has axum's
//! body limit.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

/// Bytes of a request beyond the document payload (ids, attributes, keys, field tags): what an
/// Ingest request may carry on top of `max_payload_bytes`.
pub const ENVELOPE_BYTES: usize = 64 << 10;

/// Largest request message per gRPC method (`/package.Service/Method`), and for any other.
#[derive(Debug, Clone)]
pub struct MessageLimits {
    by_method: Arc<HashMap<String, usize>>,
    default: usize,
}

impl MessageLimits {
    pub fn new(default: usize) -> Self {
        Self {
            by_method: Arc::new(HashMap::new()),
            default,
        }
    }

    /// Sets the limit of one method, e.g. `("/sluice.v1.IngestService/Ingest", 4 << 20)`.
    pub fn with(mut self, method: &str, limit: usize) -> Self {
        Arc::make_mut(&mut self.by_method).insert(method.to_owned(), limit);
        self
    }

    /// The largest limit of all: tonic's decoder limit.
    pub fn largest(&self) -> usize {
        self.by_method
            .values()
            .copied()
            .chain([self.default])
            .max()
            .unwrap_or(self.default)
    }

    pub fn limit(&self, method: &str) -> usize {
        self.by_method.get(method).copied().unwrap_or(self.default)
    }
}

impl<S> Layer<S> for MessageLimits {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limits: self.clone(),
        }
    }
}

/// The service with [`MessageLimits`] in front.
#[derive(Debug, Clone)]
pub struct Limited<S> {
    inner: S,
    limits: MessageLimits,
}

impl<S> Service<http::Request<Body>> for Limited<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let is_grpc = super::is_grpc(&request);
        if !is_grpc {
            return self.inner.call(request);
        }
        let method = request.uri().path().to_owned();
        let limit = self.limits.limit(&method);
        let request = request.map(|body| {
            Body::new(PrefixCheck {
                inner: body,
                scanner: Scanner::new(limit),
                method,
            })
        });
        self.inner.call(request)
    }
}

/// Reads the length prefixes out of a stream of gRPC frames, wherever the chunks split them.
#[derive(Debug)]
struct Scanner {
    limit: usize,
    prefix: [u8; 5],
    /// Bytes of the current prefix seen so far.
    prefix_len: usize,
    /// Bytes of the current message still to come.
    remaining: usize,
}

impl Scanner {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Takes the next chunk of the body; the announced length of the first message over the
    /// limit, if one starts in it.
    fn scan(&mut self, mut chunk: &[u8]) -> Result<(), usize> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len());
                self.remaining -= skip;
                chunk = &chunk[skip..];
                continue;
            }
            self.prefix[self.prefix_len] = chunk[0];
            self.prefix_len += 1;
            chunk = &chunk[1..];
            if self.prefix_len == self.prefix.len() {
                self.prefix_len = 0;
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if length > self.limit {
                    return Err(length);
                }
                self.remaining = length;
            }
        }
        Ok(())
    }
}

/// The request body, checked as it streams.
struct PrefixCheck {
    inner: Body,
    scanner: Scanner,
    method: String,
}

impl HttpBody for PrefixCheck {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                if let Err(length) = self.scanner.scan(data.chunk()) {
                    let limit = self.scanner.limit;
                    return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                        "request too large: {} takes messages of at most {limit} bytes, this one \
                         is {length} bytes; send less per call (IngestBatch: fewer documents)",
                        self.method
                    )))));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(length: u32) -> Vec<u8> {
        let mut frame = vec![0];
        frame.extend(length.to_be_bytes());
        frame.extend(std::iter::repeat_n(7u8, length as usize));
        frame
    }

    #[test]
    fn messages_within_the_limit_pass_however_the_body_is_split() {
        let body: Vec<u8> = [frame(10), frame(0), frame(100)].concat();
        for split in [1, 2, 3, 5, 7, 64, body.len()] {
            let mut scanner = Scanner::new(100);
            for chunk in body.chunks(split) {
                assert_eq!(scanner.scan(chunk), Ok(()), "split {split}");
            }
        }
    }

    #[test]
    fn an_oversized_message_is_caught_on_its_prefix() {
        let mut scanner = Scanner::new(100);
        assert_eq!(scanner.scan(&frame(50)), Ok(()));
        // Only the prefix of the second message has arrived.
        let second = frame(101);
        assert_eq!(scanner.scan(&second[..3]), Ok(()));
        assert_eq!(scanner.scan(&second[3..5]), Err(101));
    }

    #[test]
    fn limits_by_method() {
        let limits = MessageLimits::new(1000).with("/a.B/C", 5000);
        assert_eq!(limits.limit("/a.B/C"), 5000);
        assert_eq!(limits.limit("/a.B/D"), 1000);
        assert_eq!(limits.largest(), 5000);
    }
}
