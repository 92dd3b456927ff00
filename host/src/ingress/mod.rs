//! Ingress: network listeners that turn requests into accepted messages.

mod bulk;
mod grpc;
mod http;
mod nats;
mod together;
mod websocket;

pub use grpc::{
    GrpcIngress, IngressClient, PublishOutcome, PublishReply, PublishRequest, PublishResult,
    PublishStreamReply, Refusal, Reply,
};
pub use http::HttpIngress;
pub use nats::{NatsIngress, STREAM_SEQ_HEADER, stream_message_id};
