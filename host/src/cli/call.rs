//! `switchyard plugin call FILE.wasm --message JSON [--address HOST:PORT [--timeout-ms MS]] [--reply
//! JSON]` (or a native library).

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard::DeadLetterReason;
use switchyard::config::{PluginConfig, default_timeout_ms};
use switchyard::plugin::{
    CompiledPlugin, MiddlewareAction, NetGrant, PluginFault, PluginFormat, PluginInstance, PluginKind,
    check_decisions, check_transformed, load_file, plugin_name, read_forward, read_reply,
};
use switchyard::transport::plugin::read_transport_reply;
use switchyard_wire::{Head, Payload, decode, write_message};

/// The `--message` (and `--reply`) argument.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageArg {
    topic: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    priority: u8,
}

pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("expected KEY=VALUE, got \"{text}\""))
}

pub fn call(
    file: &Path,
    message: &str,
    config: Vec<(String, String)>,
    address: Option<&str>,
    timeout_ms: Option<u64>,
    reply: Option<&str>,
) -> anyhow::Result<()> {
    if PluginFormat::of(file).is_none() {
        let native = PluginFormat::Native.extension();
        bail!("{}: expected a .wasm plugin or a native .{native} plugin", file.display());
    }
    let message: MessageArg = serde_json::from_str(message).context("--message is not a valid message")?;
    let reply: Option<MessageArg> =
        reply.map(serde_json::from_str).transpose().context("--reply is not a valid message")?;
    // The compile cache `run` uses: a big plugin (a Python one is ~18 MB) compiles once, not at
    // every call, and a compile is told as it starts.
    let cache_dir = switchyard::config::HostSection::default().compile_cache_dir();
    let engine = super::check::engine(cache_dir.as_deref())?;
    let plugin = load_file(&engine, file, Some(&settings(file, config)?))?;
    let kind = plugin.kind;
    if timeout_ms.is_some() && kind != PluginKind::Transport {
        bail!("--timeout-ms is for transport plugins; this is a {}", kind.as_str());
    }
    let mut instance = match (kind, address) {
        (PluginKind::Transport, Some(address)) => {
            let grant = NetGrant::resolved_now(&[address.to_owned()])
                .map_err(|(_, err)| err)
                .with_context(|| format!("--address {address}"))?;
            PluginInstance::with_connect_grants(&engine, plugin, std::sync::Arc::new(grant))?
        }
        (PluginKind::Transport, None) => bail!("a transport plugin needs --address HOST:PORT to send to"),
        (_, Some(_)) => bail!("--address is for transport plugins; this is a {}", kind.as_str()),
        (_, None) => PluginInstance::new(&engine, plugin)?,
    };
    if reply.is_some() && kind != PluginKind::Middleware {
        bail!("--reply is for middleware plugins; this is a {}", kind.as_str());
    }
    let batch = message.batch(kind == PluginKind::Filter);
    // The answer is checked as the pipeline checks it, at the host's default limits.
    let max_message_bytes = switchyard::config::HostSection::default().max_message_bytes;
    let plugin = instance.plugin.clone();
    let refused = |fault| refusal(&plugin, fault, "dead-letter this message");
    let answer = match kind {
        PluginKind::Filter => {
            let mut decisions = instance.filter(&batch)?;
            check_decisions(&decisions, 1).map_err(refused)?;
            match decisions.remove(0) {
                Ok(verdict) => json!({ "verdict": format!("{verdict:?}").to_lowercase() }),
                Err(error) => json!({ "error": error.to_string() }),
            }
        }
        PluginKind::Transform => {
            let out = instance.transform(&batch)?;
            check_transformed(&out.messages, &out.errors, 1, max_message_bytes).map_err(refused)?;
            let errors: Vec<String> = out.errors.iter().map(|(_, error)| error.to_string()).collect();
            json!({ "messages": messages_json(&out.messages)?, "errors": errors })
        }
        PluginKind::Middleware => match instance.on_request(&batch)? {
            Ok(MiddlewareAction::Forward(batch)) => {
                read_forward(&batch, max_message_bytes).map_err(refused)?;
                let mut answer = json!({ "forward": messages_json(&batch)? });
                if let Some(reply) = &reply {
                    // Passed back as the pipeline passes back a reply within host.max_message_bytes.
                    match instance.on_reply(&batch, &reply.batch(false))? {
                        Ok(back) => {
                            let failed = |fault| refusal(&plugin, fault, "fail the request with this reply");
                            read_reply(&back, max_message_bytes).map_err(failed)?;
                            answer["reply"] = Value::from(messages_json(&back)?);
                        }
                        Err(error) => answer["reply_error"] = Value::from(error.to_string()),
                    }
                }
                answer
            }
            Ok(MiddlewareAction::Respond(batch)) => {
                read_reply(&batch, max_message_bytes).map_err(refused)?;
                json!({ "respond": messages_json(&batch)? })
            }
            Err(error) => json!({ "error": error.to_string() }),
        },
        PluginKind::Transport => {
            // As a destination's attempt: its `timeout_ms`, unless set the default one's.
            let timeout = Duration::from_millis(timeout_ms.unwrap_or(default_timeout_ms()));
            send(&mut instance, address.unwrap_or_default(), &batch, timeout)?
        }
        // A balancer, and any kind added after this tool: nothing to call on one message.
        other => bail!("{} plugins cannot be called on a message", other.as_str()),
    };
    println!("{}", json!({ "kind": kind.as_str(), "answer": answer }));
    Ok(())
}

/// The settings `file` is called with, read as the host reads them: its sidecar (`NAME.toml` beside
/// it), with the keys of `config` (`--config`) set over its `config`'s. No main config is known
/// here, so no `[[plugin]]` entry the sidecar could widen: its limits and grants are taken as they
/// are, as a host with `host.sidecar_grants` takes them.
fn settings(file: &Path, config: Vec<(String, String)>) -> anyhow::Result<PluginConfig> {
    let mut host = switchyard::Config::default();
    host.host.plugin_dir = match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => ".".into(),
    };
    host.host.sidecar_grants = true;
    let mut settings = switchyard::reload::configured_settings(&plugin_name(file), &host)?;
    settings.config.extend(config);
    Ok(settings)
}

impl MessageArg {
    /// The message as a one-message batch, with its payload or (`heads_only`, as a filter is
    /// given it) only its length.
    fn batch(&self, heads_only: bool) -> Vec<u8> {
        let mut batch = Vec::new();
        let head = Head { id: 1, source: 0, priority: self.priority, topic: &self.topic };
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let payload = match heads_only {
            true => Payload::Omitted(self.payload.len()),
            false => Payload::Bytes(self.payload.as_bytes()),
        };
        write_message(&mut batch, &head, headers.collect::<Vec<_>>(), payload);
        batch
    }
}

/// The error for an answer of `plugin` the host would not take: what it would do (`outcome`: make
/// a dead letter, or fail the request a reply answers), with the reason's code and text.
fn refusal(plugin: &CompiledPlugin, fault: PluginFault, outcome: &str) -> anyhow::Error {
    let version = plugin.short_version().to_owned();
    let reason = DeadLetterReason::PluginFault { plugin: plugin.name.clone(), version, fault };
    anyhow!("the host would {outcome} ({}): {reason}", reason.code())
}

/// Open a connection to `address`, send `batch` on it, close it: the reply, read as the host reads
/// it at the host's default limits, or the plugin's error. The open and the send are given
/// `timeout` between them, as the host gives a destination's attempt its `timeout_ms`.
fn send(
    instance: &mut PluginInstance,
    address: &str,
    batch: &Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    let connection = match instance.open_connection(address, timeout)? {
        Ok(connection) => connection,
        Err(error) => return Ok(json!({ "error": format!("open {address}: {error}") })),
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        instance.close_connection(connection)?;
        bail!("timed out after {timeout:?}: the open took it all, nothing was sent");
    }
    let max_reply_bytes = switchyard::config::HostSection::default().max_message_bytes;
    let answer = match instance.send_on(&connection, batch, left)? {
        Ok(Some(reply)) => match read_transport_reply(&reply, max_reply_bytes) {
            Ok(_) => messages_json(&reply).map(|reply| json!({ "reply": reply })),
            Err((_, problem)) => {
                Err(anyhow!("the host would refuse this reply, its message delivered: {problem}"))
            }
        },
        Ok(None) => Ok(json!({ "reply": null })),
        Err(error) => Ok(json!({ "error": error.to_string() })),
    };
    instance.close_connection(connection)?;
    answer
}

/// The messages of `batch` as JSON, with their priority; a payload that is not UTF-8 as
/// `payload_base64`, so that no byte is lost in the printing.
fn messages_json(batch: &[u8]) -> anyhow::Result<Vec<Value>> {
    decode(batch)
        .map(|message| {
            let message = message?;
            let mut json = json!({
                "topic": message.topic,
                "headers": message.headers().collect::<Vec<_>>(),
                "priority": message.priority,
            });
            let (field, payload) = switchyard::message::payload_field(message.payload.unwrap_or_default());
            json[field] = payload;
            Ok(json)
        })
        .collect()
}
