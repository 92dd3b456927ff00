//! The `nats` transport against a real `nats-server`: publishes reach a subscriber with their
//! headers, requests get a responder's answer, messages sent while the server is down wait and go
//! once it is back, a request nobody answers is dead-lettered as such, one whose answer is too
//! large is delivered with its reply refused, a request whose attempt was cut is forgotten (its
//! late answer dropped) and a transport dropped stops taking answers, and a host that never answers
//! the handshake was never sent anything. A server played by the test resets a connection while a
//! message is on its way.

use crate::fake_nats_server::FakeNatsServer;
use crate::nats_server::{NatsServer, fence};
use crate::support::{builder, drain_and_account, next, plugin_dir, within};
use futures_util::StreamExt;
use std::collections::HashSet;
use std::time::Duration;
use switchyard::transport::{NatsOptions, NatsTransport, Transport};
use switchyard::{Config, Host, Message, RequestError};

/// A host delivering everything to a `nats` destination on `server` with `options`.
async fn host(server: &NatsServer, options: &str, extra: &str) -> Host {
    host_with(server, "", options, extra).await
}

/// [`host`], with `settings` in its `[host]` section.
async fn host_with(server: &NatsServer, settings: &str, options: &str, extra: &str) -> Host {
    host_at(&server.address(), settings, options, extra).await
}

/// [`host_with`] for the server at `address`.
async fn host_at(address: &str, settings: &str, options: &str, extra: &str) -> Host {
    let text = format!(
        "[host]\ndead_letter = \"dead\"\n{settings}\n\
         [[destination]]\nname = \"dead\"\ntransport = \"memory\"\n\
         [[destination]]\nname = \"nats\"\ntransport = \"nats\"\nendpoints = [\"{}\"]\n\
         options = {{ {options} }}\n{extra}\n\
         [[route]]\nname = \"all\"\nto = \"nats\"\n",
        address
    );
    let config = Config::from_toml("test.toml", &text).unwrap_or_else(|err| panic!("{err}"));
    let dir = plugin_dir(&[]);
    builder(dir.path()).config("test.toml", config).build().await.unwrap()
}

/// Answer every request on `subject` with its payload in capitals, a header naming the responder
/// and one that forges a host header, and each request's `x-sy-id` sent on the returned channel.
async fn responder(client: async_nats::Client, subject: &str) -> flume::Receiver<String> {
    let mut requests = client.subscribe(subject.to_owned()).await.unwrap();
    fence(&client).await;
    let (seen, ids) = flume::unbounded();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let headers = request.headers.as_ref().expect("headers");
            let _ = seen.send(headers.get("x-sy-id").expect("an id").to_string());
            let mut answer = async_nats::HeaderMap::new();
            answer.insert("x-answered-by", "responder");
            answer.insert("x-sy-dead-letter", "forged");
            let payload = request.payload.to_ascii_uppercase().into();
            let reply = request.reply.expect("a reply subject");
            client.publish_with_headers(reply, answer, payload).await.unwrap();
        }
    });
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_reach_a_subscriber_with_their_headers() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut subscriber = client.subscribe("orders.>").await.unwrap();
    fence(&client).await;
    let host = host(&server, "subject = \"orders.{topic}\"", "").await;
    for n in 0..100 {
        host.send(
            Message::new(format!("eu.n{n}"), format!("order {n}"))
                .with_header("x-trace", n.to_string())
                // Not the host's topic header: the one the transport sets replaces it.
                .with_header("x-sy-topic", "forged"),
        )
        .await
        .unwrap();
    }
    let mut ids = HashSet::new();
    for _ in 0..100 {
        let message = within(subscriber.next()).await.expect("subscribed");
        let headers = message.headers.expect("headers");
        let n = headers.get("x-trace").expect("the message's own header").to_string();
        assert_eq!(message.subject.as_str(), format!("orders.eu.n{n}"), "the subject from the topic");
        assert_eq!(headers.get("x-sy-topic").map(|value| value.as_str()), Some(format!("eu.n{n}").as_str()));
        assert_eq!(message.payload, format!("order {n}"));
        ids.insert(headers.get("x-sy-id").expect("the unique id").to_string());
    }
    assert_eq!(ids.len(), 100, "every message carries its own x-sy-id");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_the_responders_answer_as_its_reply() {
    let server = NatsServer::start();
    let _requests = responder(server.client().await, "svc.>").await;
    let host = host(&server, "subject = \"svc.{topic}\", reply = true", "").await;
    let reply = within(host.request(Message::new("echo", "hello"))).await.unwrap().expect("a reply");
    assert_eq!(reply.payload, "HELLO");
    assert_eq!(reply.header("x-answered-by"), Some("responder"));
    assert_eq!(reply.header("x-sy-dead-letter"), None, "a peer does not set the host's headers");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_larger_than_the_host_reads_is_refused_and_its_request_counted_delivered() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut requests = client.subscribe("svc.>").await.unwrap();
    fence(&client).await;
    let (seen, ids) = flume::unbounded();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let _ = seen.send(request.payload.clone());
            let reply = request.reply.expect("a reply subject");
            client.publish(reply, vec![b'x'; 2048].into()).await.unwrap();
        }
    });
    let retry = "idempotent = true\nretry = { attempts = 3, base_ms = 1, max_ms = 5 }";
    let host =
        host_with(&server, "max_message_bytes = 1024", "subject = \"svc.{topic}\", reply = true", retry);
    let host = host.await;
    let answer = within(host.request(Message::new("big", "hello"))).await;
    let Err(RequestError::ReplyRefused { destination, problem }) = answer else {
        panic!("delivered, its reply refused: {answer:?}")
    };
    assert_eq!(destination, "nats");
    assert!(problem.ends_with(": a reply of more than 1024 bytes"), "{problem}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (1, 0));
    assert!(host.memory("dead").unwrap().is_empty());
    assert_eq!(ids.drain().collect::<Vec<_>>(), ["hello"], "taken once: not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_server_is_down_wait_and_go_once_it_is_back() {
    let mut server = NatsServer::start();
    let requests = responder(server.client().await, "svc.>").await;
    let retry = "retry = { attempts = 100, base_ms = 5, max_ms = 50 }\nbreaker = { open_ms = 20 }";
    let host = host(&server, "subject = \"svc.{topic}\", reply = true", retry).await;
    for n in 0..10 {
        within(host.request(Message::new("before", n.to_string()))).await.unwrap().expect("a reply");
    }
    server.stop();
    // A request in flight as the server dies is uncertain (it may have been taken); this test is
    // about what is sent once the host knows the server is gone: its connection shows as closed.
    within(async {
        while host.destinations().iter().any(|destination| {
            destination.endpoints.iter().any(|endpoint| endpoint.pool.is_some_and(|pool| pool.size > 0))
        }) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    for n in 0..30 {
        host.send(Message::new("during", n.to_string())).await.unwrap();
    }
    let stats = host.stats();
    assert_eq!((stats.delivered, stats.dead_lettered), (10, 0), "nothing goes while the server is down");
    server.restart();
    // The responder's client comes back on its own; until it has subscribed again the server
    // answers "no responders", and the messages are retried: nobody took them.
    let mut ids = HashSet::new();
    while ids.len() < 40 {
        ids.insert(within(requests.recv_async()).await.unwrap());
    }
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (40, 0), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_nobody_answers_is_retried_then_dead_lettered_as_no_responders() {
    let server = NatsServer::start();
    let retry = "retry = { attempts = 3, base_ms = 1, max_ms = 5 }";
    let host = host(&server, "subject = \"svc.{topic}\", reply = true", retry).await;
    let answer = within(host.request(Message::new("nobody", "hello?"))).await;
    assert!(matches!(answer, Err(RequestError::DeadLettered(_))), "{answer:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-failed"));
    assert_eq!(letter.header("x-sy-attempts"), Some("3"));
    let error = letter.header("x-sy-last-error").unwrap();
    assert!(error.contains("no responders on subject svc.nobody"), "{error}");
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1));
}

/// The request `attempt` made, once it reached the subscriber `requests`; the attempt, unanswered,
/// still waits for its reply.
async fn reached(
    attempt: &mut switchyard::transport::AttemptFuture<'_>,
    requests: &mut async_nats::Subscriber,
) -> async_nats::Message {
    tokio::select! {
        result = attempt => panic!("answered before it was answered: {result:?}"),
        request = within(requests.next()) => request.expect("subscribed"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_whose_attempts_were_cut_are_forgotten_and_their_late_answers_dropped() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut requests = client.subscribe("svc.>").await.unwrap();
    fence(&client).await;
    let transport = NatsTransport::new(NatsOptions { subject: "svc.{topic}".into(), reply: true });
    let address = server.address();
    // A responder that takes each request and does not answer: its attempt is cut (dropped, as
    // the attempt's deadline does) once the request has reached it.
    let mut unanswered = Vec::new();
    for n in 0..50 {
        let message = Message::new("held", n.to_string());
        let mut attempt = transport.attempt(&address, &message);
        let request = reached(&mut attempt, &mut requests).await;
        assert_eq!(transport.requests_awaiting_reply(&address), 1, "request {n} waits");
        drop(attempt);
        assert_eq!(transport.requests_awaiting_reply(&address), 0, "request {n} was cut: forgotten");
        unanswered.push(request.reply.expect("a reply subject"));
    }
    // Their answers come late, then a request is answered: it gets its own answer, not theirs.
    for reply in unanswered {
        client.publish(reply, "late".into()).await.unwrap();
    }
    let message = Message::new("answered", "now");
    let mut attempt = transport.attempt(&address, &message);
    let request = reached(&mut attempt, &mut requests).await;
    client.publish(request.reply.expect("a reply subject"), "on time".into()).await.unwrap();
    let reply = within(attempt).await.unwrap().expect("a reply");
    assert_eq!(reply.payload, "on time");
    assert_eq!(transport.requests_awaiting_reply(&address), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_dropped_stops_taking_answers_at_its_reply_subjects() {
    let server = NatsServer::start();
    let client = server.client().await;
    let mut requests = client.subscribe("svc.>").await.unwrap();
    fence(&client).await;
    let transport = NatsTransport::new(NatsOptions { subject: "svc.{topic}".into(), reply: true });
    let address = server.address();
    let message = Message::new("answered", "now");
    let mut attempt = transport.attempt(&address, &message);
    let request = reached(&mut attempt, &mut requests).await;
    let reply_to = request.reply.expect("a reply subject");
    client.publish(reply_to.clone(), "on time".into()).await.unwrap();
    assert_eq!(within(attempt).await.unwrap().expect("a reply").payload, "on time");
    // The subscription its replies came to held the connection open; gone with the transport, the
    // server has no one to take an answer there.
    drop(transport);
    within(async {
        loop {
            let asked = async_nats::Request::new().timeout(Some(Duration::from_millis(100)));
            match client.send_request(reply_to.clone(), asked).await {
                Err(err) if err.kind() == async_nats::RequestErrorKind::NoResponders => break,
                _ => continue,
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_the_handshake_was_never_sent_the_message() {
    // The deadline cut the connect (async-nats waits 5 s for the server's INFO): the message was
    // dead-lettered `delivery-uncertain` after one attempt, though it never left.
    let silent = crate::support::Silent::start();
    let extra = "timeout_ms = 300\nqueue = { timeout_ms = 1500 }";
    let host = host_at(&silent.addr.to_string(), "", "subject = \"svc.{topic}\"", extra).await;
    let reason = crate::support::assert_never_sent(&host).await;
    assert!(reason.contains("not connected within the attempt's 300ms"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_connection_was_reset_before_it_went_out_is_not_counted_delivered() {
    // More than the client's socket buffers hold (tcp_wmem's 4 MiB at most on Linux by default,
    // and the server's receive buffer is small): part of it waits in the client's own buffer.
    const BIG: usize = 16 << 20;
    let fake = FakeNatsServer::start_with_receive_buffer(4096).await;
    let settings = format!("max_message_bytes = {}", 2 * BIG);
    // The attempt's deadline is only a safety net here: the reset, not a timeout, must end it.
    let extra = "timeout_ms = 60000";
    let host = host_at(&fake.address(), &settings, "subject = \"jobs.{topic}\"", extra).await;
    host.send(Message::new("big", vec![b'x'; BIG])).await.unwrap();
    let info = format!("{{\"max_payload\":{},\"headers\":true}}", 2 * BIG);
    let mut first = fake.accept().await;
    first.handshake(&info).await;
    // The message is in the client's buffer and going out when the server resets the connection
    // without reading it; the client connects again at once, to a server that reads everything.
    let line = first.line().await;
    assert!(line.starts_with("HPUB jobs.big "), "{line:?}");
    drop(first);
    let mut second = fake.accept().await;
    second.handshake(&info).await;
    let _published = second.serve();
    let stats = drain_and_account(&host).await;
    assert_eq!((stats.delivered, stats.dead_lettered), (0, 1), "{stats:?}");
    let letter = next(&host.memory("dead").unwrap()).await;
    assert_eq!(letter.header("x-sy-dead-letter"), Some("delivery-uncertain"), "not idempotent");
    let error = letter.header("x-sy-last-error").unwrap();
    assert!(error.contains("connection made again while sending: may not have gone out"), "{error}");
    assert_eq!(letter.payload.len(), BIG);
}
