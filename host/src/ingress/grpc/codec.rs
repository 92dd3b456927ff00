//! The codec of the ingress's calls (named in the generated code, see `scripts/grpc-codegen`):
//! prost's, but a request's headers are counted on the wire before any is decoded, and a request
//! with more than the host takes ([`MAX_HEADERS`](crate::host::MAX_HEADERS)) is refused for their
//! count (`INVALID_ARGUMENT`, as admission words it), none of them built. Decoded into their map,
//! tiny headers by the hundred thousand within `max_message_bytes` made the host hold far more than
//! it read; the bulk and WebSocket ingresses count a message's headers past the limit likewise.
//!
//! In a stream read through [`counting_headers`], such a request is refused alone: tonic reads
//! nothing more of a stream after a decode error (it stays in the middle of the message), so there
//! the decoder gives an empty request in its place and the refusal beside it.

use super::{PublishReply, PublishRequest, PublishStreamReply};
use bytes::Buf;
use prost::encoding::{DecodeContext, WireType, decode_key, skip_field};
use std::cell::Cell;
use std::future::Future;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Encodes `T` and decodes `U` as `tonic_prost::ProstCodec` does, counting a request's headers
/// first ([`HeaderCountingDecoder`]).
pub(super) struct IngressCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for IngressCodec<T, U> {
    fn default() -> Self {
        IngressCodec(PhantomData)
    }
}

impl<T: prost::Message + Send + 'static, U: Decoded> Codec for IngressCodec<T, U> {
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = HeaderCountingDecoder<U>;

    fn encoder(&mut self) -> ProstEncoder<T> {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> HeaderCountingDecoder<U> {
        HeaderCountingDecoder(PhantomData)
    }
}

/// A message the ingress's calls decode: a request (in the ingress), an answer (in the client).
pub(super) trait Decoded: prost::Message + Default + Send + 'static {
    /// The tag of its field of a message's headers (a `map<string, string>`), for a request.
    const HEADERS_TAG: Option<u32> = None;
}

impl Decoded for PublishRequest {
    /// `headers = 2` in `host/proto/ingress.proto`.
    const HEADERS_TAG: Option<u32> = Some(2);
}

impl Decoded for PublishReply {}

impl Decoded for PublishStreamReply {}

tokio::task_local! {
    /// The refusal of the request a stream's read decoded in place of one with more headers than
    /// the host takes: see [`counting_headers`].
    static OVER_COUNT: Cell<Option<String>>;
}

/// Await `read`, a read of a stream's next request, refusing one with more headers than the host
/// takes alone: what it reads in its place is an empty request, given with the refusal (the
/// headers' count), where elsewhere (a unary call) it is a decode error.
pub(super) async fn counting_headers<T>(read: impl Future<Output = T>) -> (T, Option<String>) {
    let read = async {
        let read = read.await;
        (read, OVER_COUNT.with(Cell::take))
    };
    OVER_COUNT.scope(Cell::new(None), read).await
}

/// Decodes `U`, refusing one with more headers than the host takes before any is decoded (in a
/// stream read through [`counting_headers`]: an empty one in its place, the refusal beside it).
pub(super) struct HeaderCountingDecoder<U>(PhantomData<U>);

impl<U: Decoded> Decoder for HeaderCountingDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // The message whole: tonic reads it into one buffer, so this copies nothing.
        let message = buf.copy_to_bytes(buf.remaining());
        let count = U::HEADERS_TAG.map(|tag| entries(&message, tag));
        if let Some(problem) = count.and_then(crate::host::header_count_problem) {
            if OVER_COUNT.try_with(|refused| refused.set(Some(problem.clone()))).is_ok() {
                return Ok(Some(U::default()));
            }
            return Err(Status::invalid_argument(problem));
        }
        // A message that does not decode is INTERNAL, as tonic-prost's decoder has it.
        U::decode(message).map(Some).map_err(|error| Status::internal(error.to_string()))
    }
}

/// The entries of the length-delimited field `tag` at the top level of the protobuf `message` (a
/// name given twice counted twice), up to anything that does not parse (which decoding refuses).
fn entries(mut message: &[u8], tag: u32) -> usize {
    let mut count = 0;
    while !message.is_empty() {
        let Ok((field, wire_type)) = decode_key(&mut message) else { break };
        count += usize::from(field == tag && wire_type == WireType::LengthDelimited);
        if skip_field(wire_type, field, &mut message, DecodeContext::default()).is_err() {
            break;
        }
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn a_requests_header_entries_are_counted_past_its_other_fields() {
        let mut request =
            PublishRequest { topic: "t".into(), payload: b"p".to_vec(), priority: 3, ..Default::default() };
        request.headers = (0..5).map(|n| (format!("h{n}"), String::new())).collect();
        let mut bytes = request.encode_to_vec();
        // A name given twice (the map keeps one entry), and a field the proto does not have (6, a varint).
        bytes.extend(
            PublishRequest { headers: [("h0".into(), "v".into())].into(), ..Default::default() }
                .encode_to_vec(),
        );
        bytes.extend([6 << 3, 7]);
        assert_eq!(entries(&bytes, 2), 6);
        assert_eq!(entries(&bytes[..bytes.len() - 1], 2), 6, "up to what does not parse");
    }
}
