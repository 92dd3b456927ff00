//! Embedding Switchyard in your own Rust program: a WASM filter plugin, a
//! native transform and a destination written as a closure.
//!
//! Run it with `cargo run --example embed` (the plugin is built from
//! `plugins/header-filter` by the `switchyard-plugin-artifacts` crate).

use switchyard::{Config, Host, Message, RouteConfig};

#[tokio::main]
async fn main() {
    // A plugin directory holding one plugin, `vip.wasm` (a header filter).
    let plugins = tempfile::tempdir().expect("a temporary directory");
    std::fs::copy(switchyard_plugin_artifacts::HEADER_FILTER, plugins.path().join("vip.wasm")).expect("copy");
    let config = Config::from_toml(
        "embed.toml",
        r#"
        [[plugin]]
        name = "vip"
        config = { require_header = "tier", require_value = "gold" }
        "#,
    )
    .expect("a valid config");

    let host = Host::builder()
        .config("embed.toml", config)
        .plugin_dir(plugins.path())
        // A native stage: plain Rust, registered by name.
        .transform("stamp", |m: &Message| Ok(vec![m.clone().with_header("x-stamped", "yes")]))
        // A destination: any async closure returning an optional reply.
        .destination("shipping", |m: Message| async move {
            let reply = format!("shipped order {} ({} bytes)", m.id, m.payload.len());
            Ok(Some(Message::new("shipping.receipt", reply)))
        })
        .route(
            RouteConfig::new("orders", "orders.*", "shipping").stage("filter:vip").stage("transform:stamp"),
        )
        .build()
        .await
        .expect("the host starts");

    let gold = Message::new("orders.eu", r#"{"sku":"A1"}"#).with_header("tier", "gold");
    let receipt = host.request(gold).await.expect("a reply").expect("the destination replies");
    println!("reply: {}", String::from_utf8_lossy(&receipt.payload));

    let plain = Message::new("orders.eu", r#"{"sku":"B2"}"#).with_header("tier", "bronze");
    let dropped = host.request(plain).await.expect_err("the filter drops it");
    println!("plain order: {dropped}");

    host.send(Message::new("orders.us", "{}").with_header("tier", "gold")).await.expect("accepted");
    host.shutdown().await; // drains: every accepted message is settled first
    let stats = host.stats();
    println!("stats: {stats:?}");
    assert_eq!((stats.accepted, stats.delivered, stats.filtered), (3, 2, 1));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        super::main();
    }
}
