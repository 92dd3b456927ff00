//! `switchyard plugin call FILE.wasm --message JSON` (or a native library).

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use switchyard::config::PluginConfig;
use switchyard::plugin::{
    MiddlewareAction, PluginEngine, PluginInstance, PluginKind, load_file, plugin_name,
};
use switchyard_wire::{Head, Payload, decode, write_message};

/// The `--message` argument.
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

pub fn call(file: &Path, message: &str, config: Vec<(String, String)>) -> anyhow::Result<()> {
    let message: MessageArg = serde_json::from_str(message).context("--message is not a valid message")?;
    let engine = PluginEngine::new(None)?;
    let plugin_config =
        PluginConfig { name: plugin_name(file), config: config.into_iter().collect(), ..Default::default() };
    let plugin = load_file(&engine, file, Some(&plugin_config))?;
    let kind = plugin.kind;
    let mut instance = PluginInstance::new(&engine, plugin)?;
    let mut batch = Vec::new();
    let head = Head { id: 1, source: 0, priority: message.priority, topic: &message.topic };
    let headers = message.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let payload = match kind {
        PluginKind::Filter => Payload::Omitted(message.payload.len()),
        _ => Payload::Bytes(message.payload.as_bytes()),
    };
    write_message(&mut batch, &head, headers.collect::<Vec<_>>(), payload);
    let answer = match kind {
        PluginKind::Filter => match instance.filter(&batch)?.pop() {
            Some(Ok(verdict)) => json!({ "verdict": format!("{verdict:?}").to_lowercase() }),
            Some(Err(error)) => json!({ "error": error.to_string() }),
            None => bail!("the filter returned no decision"),
        },
        PluginKind::Transform => {
            let out = instance.transform(&batch)?;
            let errors: Vec<String> = out.errors.iter().map(|(_, error)| error.to_string()).collect();
            json!({ "messages": messages_json(&out.messages)?, "errors": errors })
        }
        PluginKind::Middleware => match instance.on_request(&batch)? {
            Ok(MiddlewareAction::Forward(batch)) => json!({ "forward": messages_json(&batch)? }),
            Ok(MiddlewareAction::Respond(batch)) => json!({ "respond": messages_json(&batch)? }),
            Err(error) => json!({ "error": error.to_string() }),
        },
        PluginKind::Balancer | PluginKind::Transport => {
            bail!("{} plugins cannot be called on a message", kind.as_str())
        }
    };
    println!("{}", json!({ "kind": kind.as_str(), "answer": answer }));
    Ok(())
}

fn messages_json(batch: &[u8]) -> anyhow::Result<Vec<Value>> {
    decode(batch)
        .map(|message| {
            let message = message?;
            Ok(json!({
                "topic": message.topic,
                "headers": message.headers().collect::<Vec<_>>(),
                "payload": String::from_utf8_lossy(message.payload.unwrap_or_default()),
            }))
        })
        .collect()
}
