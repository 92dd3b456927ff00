//! The NATS ingress: `[[ingress.nats]]` entries whose messages the host admits — core NATS subject
//! subscriptions (`subjects`, see `subjects`), or a JetStream stream through a durable pull
//! consumer (`stream`, see `jetstream`), acknowledged message by message once settled.

mod durable;
mod jetstream;
mod protocol;
mod subjects;

use crate::config::NatsIngressConfig;
use crate::host::{BuildError, Host};
use std::future::Future;

pub use crate::message::STREAM_SEQ_HEADER;
pub use jetstream::stream_message_id;

/// A NATS ingress connected to its server, ready to serve.
#[derive(Debug)]
pub struct NatsIngress {
    source: Source,
}

#[derive(Debug)]
enum Source {
    // Boxed: both are large, and unequal.
    Subjects(Box<subjects::SubjectIngress>),
    Stream(Box<jetstream::StreamIngress>),
}

impl NatsIngress {
    /// Connect to the server of `config`, for `host`: subscribe to its subjects, or find its stream
    /// and create (or join) its durable consumer.
    pub async fn connect(host: Host, config: NatsIngressConfig) -> Result<NatsIngress, BuildError> {
        let source = match config.stream.is_some() {
            true => Source::Stream(Box::new(jetstream::StreamIngress::connect(host, config).await?)),
            false => Source::Subjects(Box::new(subjects::SubjectIngress::connect(host, config).await?)),
        };
        Ok(NatsIngress { source })
    }

    /// The settings it serves.
    pub fn config(&self) -> &NatsIngressConfig {
        match &self.source {
            Source::Subjects(ingress) => ingress.config(),
            Source::Stream(ingress) => ingress.config(),
        }
    }

    /// Admit what the server delivers until `shutdown` completes; then stop gracefully (see the
    /// docs of each kind).
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        match self.source {
            Source::Subjects(ingress) => (*ingress).serve(shutdown).await,
            Source::Stream(ingress) => (*ingress).serve(shutdown).await,
        }
    }
}
