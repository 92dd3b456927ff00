//! {{name}}: a Switchyard transform plugin.
//!
//! Stamps every message with the header `x-stamp`, whose value is the config
//! key `stamp` (default `{{name}}`); the rest passes unchanged.

use switchyard_plugin::{Error, Message, Output, Transform, config, export_transform};

struct Plugin;

/// The stamp for a plugin configured with `configured`.
fn stamp(configured: Option<String>) -> String {
    configured.unwrap_or_else(|| "{{name}}".to_owned())
}

impl Transform for Plugin {
    fn transform(message: &Message<'_>, out: &mut Output) -> Result<(), Error> {
        out.emit(message).with_header("x-stamp", &stamp(config("stamp"))).finish();
        Ok(())
    }
}

export_transform!(Plugin);

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn the_stamp_is_the_configured_one_or_the_plugin_name() {
        assert_eq!(stamp(Some("v2".into())), "v2");
        assert_eq!(stamp(None), "{{name}}");
    }
}
