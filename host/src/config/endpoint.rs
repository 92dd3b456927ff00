//! An endpoint of a network destination: `"host:port"`, or
//! `{ address = "host:port", weight = 3 }` to give it a weight.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The heaviest weight an endpoint may be given.
pub const MAX_WEIGHT: u32 = 10_000;

/// One entry of a destination's `endpoints`.
///
/// ```
/// let config = switchyard::Config::from_toml("t.toml", r#"
///     [[destination]]
///     name = "api"
///     transport = "http"
///     endpoints = ["10.0.0.7:8080", { address = "10.0.0.8:8080", weight = 3 }]
/// "#).unwrap();
/// let weights: Vec<u32> = config.destinations[0].endpoints.iter().map(|e| e.weight).collect();
/// assert_eq!(weights, [1, 3]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// `host:port`.
    pub address: String,
    /// Its share of the traffic relative to the destination's other endpoints, 1 to [`MAX_WEIGHT`];
    /// 1 when given as a bare address. The `weighted` balancer sends it exactly this share, `p2c-ewma`
    /// counts its load per unit of weight, and a WASM balancer plugin is shown it.
    pub weight: u32,
}

/// The table form, whose fields are checked like every other table's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    address: String,
    #[serde(default = "one", deserialize_with = "weight")]
    weight: u32,
}

/// What [`is_host_and_port`] wants, as an error says it.
pub(crate) const HOST_AND_PORT: &str =
    "expected host:port, the port 1 to 65535 (an IPv6 address in brackets)";

/// Whether `address` is `host:port`: a name or IPv4 address, or an IPv6 address in brackets, and a
/// port something can listen on (not 0).
pub(crate) fn is_host_and_port(address: &str) -> bool {
    address.rsplit_once(':').is_some_and(|(host, port)| {
        let name = !host.is_empty()
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        let ipv6 = host.strip_prefix('[').and_then(|host| host.strip_suffix(']'));
        let host = name || ipv6.is_some_and(|ipv6| ipv6.parse::<std::net::Ipv6Addr>().is_ok());
        host && port.parse::<u16>().is_ok_and(|port| port > 0)
    })
}

fn one() -> u32 {
    1
}

/// A weight of 1 to [`MAX_WEIGHT`]; any other integer is refused where it is written.
fn weight<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let weight = i64::deserialize(deserializer)?;
    u32::try_from(weight).ok().filter(|weight| (1..=MAX_WEIGHT).contains(weight)).ok_or_else(|| {
        let expected = format!("a weight of 1 to {MAX_WEIGHT}");
        de::Error::invalid_value(de::Unexpected::Signed(weight), &expected.as_str())
    })
}

impl<'de> Deserialize<'de> for EndpointConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EndpointVisitor)
    }
}

/// Takes a string or a table, so that errors about the table's fields keep their own words.
struct EndpointVisitor;

impl<'de> Visitor<'de> for EndpointVisitor {
    type Value = EndpointConfig;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"host:port\" or { address = \"host:port\", weight = N }")
    }

    fn visit_str<E: de::Error>(self, address: &str) -> Result<EndpointConfig, E> {
        Ok(EndpointConfig { address: address.to_owned(), weight: 1 })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EndpointConfig, A::Error> {
        let table = EndpointTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(EndpointConfig { address: table.address, weight: table.weight })
    }
}

impl Serialize for EndpointConfig {
    /// The form it could have been written in: the bare address at weight 1, else the table.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        if self.weight == 1 {
            return serializer.serialize_str(&self.address);
        }
        let mut table = serializer.serialize_struct("EndpointConfig", 2)?;
        table.serialize_field("address", &self.address)?;
        table.serialize_field("weight", &self.weight)?;
        table.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, Serialize)]
    struct Endpoints {
        endpoints: Vec<EndpointConfig>,
    }

    #[test]
    fn bare_addresses_and_tables_read_and_write_in_their_own_form() {
        let text = "endpoints = [\"a:1\", { address = \"b:2\", weight = 3 }, { address = \"c:3\" }]\n";
        let read: Endpoints = toml::from_str(text).unwrap();
        let weights: Vec<(&str, u32)> =
            read.endpoints.iter().map(|endpoint| (endpoint.address.as_str(), endpoint.weight)).collect();
        assert_eq!(weights, [("a:1", 1), ("b:2", 3), ("c:3", 1)]);
        let written = serde_json::to_string(&read).unwrap();
        assert_eq!(written, r#"{"endpoints":["a:1",{"address":"b:2","weight":3},"c:3"]}"#);
    }

    #[test]
    fn unknown_table_fields_are_named() {
        let error = toml::from_str::<Endpoints>("endpoints = [{ address = \"a:1\", wieght = 3 }]\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `wieght`, expected `address` or `weight`"), "{error}");
    }
}
