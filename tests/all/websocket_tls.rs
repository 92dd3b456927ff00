//! The `websocket` transport over TLS (`tls = true`) against a real `wss://` server on 127.0.0.1 whose
//! certificate a private CA made for the test signed: replies, a server restart with nothing lost, a
//! certificate the host does not trust: dead letters naming the TLS failure, and a failing probe, and
//! a CA file rotated in place, trusted from the next reload, a config refused for a CA file not
//! there yet, applied once it is and the config is written again; payloads, each out at its first
//! attempt.

use crate::reload_once::caught_up;
use crate::support::{drain_and_account, event_where, host, next, plugin_dir, within};
use crate::websocket_transport::{Server, config, goes_away_and_comes_back, request_all};
use std::path::PathBuf;
use std::sync::Arc;
use switchyard::destination::DestinationEvent;
use switchyard::{Config, ConfigChange, Host, HostEvent, Message};
use tempfile::TempDir;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A private CA named `name`, written as `ca.pem`, and a server certificate for 127.0.0.1 it signed.
struct Pki {
    dir: TempDir,
    /// Serves the server certificate (with the CA's behind it).
    acceptor: TlsAcceptor,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(rcgen::DnType::CommonName, name);
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        let chain = vec![leaf.der().clone(), CertificateDer::from(ca.der().to_vec())];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        Pki { dir, acceptor: TlsAcceptor::from(Arc::new(server)) }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The websocket options trusting this CA.
    fn trusted(&self) -> String {
        format!(", tls = true, ca_file = \"{}\"", self.ca_file().display())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_envelopes_through_a_private_ca_are_answered_by_id() {
    let pki = Pki::new("test CA");
    let server =
        Server::start("127.0.0.1:0".parse().unwrap(), true, Arc::default(), Some(pki.acceptor.clone())).await;
    let dir = plugin_dir(&[]);
    let options = format!(", frames = \"envelope\"{}", pki.trusted());
    let host = host(dir.path(), &config(server.addr, &options)).await;
    request_all(&host, 0, 200).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (200, 0));
    assert_eq!(server.seen(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_payloads_each_go_out_at_their_first_attempt() {
    // Before it writes a payload the host has what the server sent read (its Close among it), here
    // through TLS: no payload waits for it past its attempt's deadline.
    let pki = Pki::new("test CA");
    let server =
        Server::start("127.0.0.1:0".parse().unwrap(), false, Arc::default(), Some(pki.acceptor.clone()))
            .await;
    let dir = plugin_dir(&[]);
    let host = host(dir.path(), &config(server.addr, &pki.trusted())).await;
    for n in 0..20 {
        host.send(Message::new("orders", format!("order {n}"))).await.unwrap();
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 0));
    let text = host.metrics().encode();
    for outcome in ["retryable", "fatal", "shed"] {
        let labels = [("destination", "ws"), ("outcome", outcome)];
        let failed = crate::exposition::sample(&text, "switchyard_transport_attempts_total", &labels);
        assert_eq!(failed.unwrap_or(0.0), 0.0, "no attempt {outcome}, none cut waiting to write");
    }
    crate::support::eventually(|| match server.seen() {
        20 => Ok(()),
        seen => Err(seen),
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wss_server_that_goes_away_and_comes_back_loses_nothing() {
    let pki = Pki::new("test CA");
    goes_away_and_comes_back(Some(pki.acceptor.clone()), &pki.trusted()).await;
}

/// A wss server whose certificate comes from a CA the host is not told to trust: the
/// server's PKI (kept alive beside it), the PKI the host trusts, and the server.
async fn untrusted_server() -> (Pki, Pki, Server) {
    let (served, trusted) = (Pki::new("a stranger CA"), Pki::new("the trusted CA"));
    let server =
        Server::start("127.0.0.1:0".parse().unwrap(), true, Arc::default(), Some(served.acceptor.clone()))
            .await;
    (served, trusted, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_dead_letters_each_message_naming_the_tls_failure() {
    let (_served, trusted, server) = untrusted_server().await;
    let dir = plugin_dir(&[]);
    let options = format!(", frames = \"envelope\"{}", trusted.trusted());
    // One attempt each: between handshakes the endpoint backs off (100 ms doubling), and messages wait.
    let config = config(server.addr, &options) + "[destination.retry]\nattempts = 1\n";
    let host = host(dir.path(), &config).await;
    for n in 0..5 {
        host.send(Message::new("jobs", format!("job {n}"))).await.unwrap();
    }
    let dead = host.memory("dead").unwrap();
    for _ in 0..5 {
        let letter = next(&dead).await;
        assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"), "{letter:?}");
        let last = letter.header("x-sy-last-error").unwrap();
        let expected = format!(
            "wss://{}/in: TLS handshake failed: invalid peer certificate: UnknownIssuer (trusting the CAs of {})",
            server.addr,
            trusted.ca_file().display()
        );
        assert!(last.contains(&expected), "{last}");
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 5), "{stats:?}");
    assert_eq!(server.seen(), 0, "no frame crossed an untrusted connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_rotated_in_place_is_trusted_from_the_next_reload() {
    let (served, trusted, server) = untrusted_server().await;
    let dir = plugin_dir(&[]);
    let options = format!(", frames = \"envelope\"{}", trusted.trusted());
    let text = config(server.addr, &options) + "[destination.retry]\nattempts = 1\n";
    let host = host(dir.path(), &text).await;
    host.send(Message::new("jobs", "before the rotation")).await.unwrap();
    let letter = next(&host.memory("dead").unwrap()).await;
    let last = letter.header("x-sy-last-error").unwrap();
    assert!(last.contains("UnknownIssuer"), "the file's first CA does not trust the server: {last}");
    let same_text = || Config::from_toml("test.toml", &text).unwrap();
    let change = within(host.apply_config("test.toml", same_text())).await.unwrap();
    assert_eq!(change, ConfigChange::Unchanged, "the same text and the same certificates");
    // The same path now holds the server's CA: the config's text is the same, its trust is not.
    std::fs::copy(served.ca_file(), trusted.ca_file()).unwrap();
    let change = within(host.apply_config("test.toml", same_text())).await.unwrap();
    assert_eq!(change, ConfigChange::Applied, "the CA file's certificates changed");
    request_all(&host, 0, 20).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 1), "{stats:?}");
    assert_eq!(server.seen(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_refused_for_a_ca_file_not_there_yet_applies_once_it_is_and_the_config_is_written_again() {
    // The config's text was taken as read and refused: the same text, written again once the CA
    // file was there, was left alone until an explicit reload or an edit of the text.
    let pki = Pki::new("test CA");
    let server =
        Server::start("127.0.0.1:0".parse().unwrap(), true, Arc::default(), Some(pki.acceptor.clone())).await;
    let (plugins, state) = (plugin_dir(&[]), tempfile::tempdir().unwrap());
    let config_path = state.path().join("switchyard.toml");
    let text = |options: &str| {
        let plugin_dir = format!("[host]\nplugin_dir = {:?}", plugins.path());
        config(server.addr, &format!(", frames = \"envelope\"{options}")).replacen("[host]", &plugin_dir, 1)
    };
    std::fs::write(&config_path, text("")).unwrap();
    let host = Host::builder().config_file(&config_path).unwrap();
    let host = host.state_dir(state.path().join(".switchyard")).build().await.unwrap();
    let mut events = host.subscribe();
    let later = pki.dir.path().join("ca.pem.later");
    std::fs::rename(pki.ca_file(), &later).unwrap();
    std::fs::write(&config_path, text(&pki.trusted())).unwrap();
    let rejected = |event: &HostEvent| matches!(event, HostEvent::ConfigRejected { .. });
    let HostEvent::ConfigRejected { reason, .. } = event_where(&mut events, rejected).await else {
        unreachable!()
    };
    assert!(reason.contains(&pki.ca_file().display().to_string()), "{reason}");
    std::fs::write(&config_path, text(&pki.trusted())).unwrap();
    caught_up(&mut events, plugins.path()).await;
    assert_eq!(host.event_counts().configs_rejected, 1, "the same refusal was told again");
    std::fs::rename(&later, pki.ca_file()).unwrap();
    std::fs::write(&config_path, text(&pki.trusted())).unwrap();
    caught_up(&mut events, plugins.path()).await;
    assert_eq!(
        host.event_counts().configs_applied,
        1,
        "the same text, its CA file there now, was left alone"
    );
    request_all(&host, 0, 20).await;
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (20, 0), "{stats:?}");
    assert_eq!(server.seen(), 20, "sent over TLS trusting the CA file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_probe_of_an_untrusted_server_fails_naming_the_tls_failure() {
    let (_served, trusted, server) = untrusted_server().await;
    let dir = plugin_dir(&[]);
    let options = format!(", frames = \"envelope\"{}", trusted.trusted());
    let host = host(dir.path(), &config(server.addr, &options)).await;
    // Health checks begin with the config applied after subscribing: no event goes unseen.
    let mut events = host.subscribe();
    let checked =
        config(server.addr, &options) + "[destination.health]\ninterval_ms = 20\nrise = 1\nfall = 1\n";
    host.apply_config("checked.toml", Config::from_toml("checked.toml", &checked).unwrap()).await.unwrap();
    let down =
        |event: &HostEvent| matches!(event, HostEvent::Destination(DestinationEvent::EndpointDown { .. }));
    let HostEvent::Destination(DestinationEvent::EndpointDown { reason, .. }) =
        event_where(&mut events, down).await
    else {
        unreachable!()
    };
    assert!(reason.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"), "{reason}");
    assert_eq!(server.seen(), 0);
    drain_and_account(&host).await;
}
