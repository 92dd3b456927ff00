//! The golden vectors of `vectors/` (specified in `docs/wire-format.md`):
//! every `NAME.bin` decodes to the messages of `NAME.json`, and those
//! messages encode to exactly the bytes of `NAME.bin`; likewise for the
//! filter answers of `vectors/decisions/`. The Python and JavaScript codecs
//! are tested against the same files.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use switchyard_wire::decisions::{DecisionsWriter, read_decisions};
use switchyard_wire::native::{ErrorKind, Failure};
use switchyard_wire::{Head, MessageRef, Payload, decode, write_message};

/// One `NAME.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    #[expect(dead_code, reason = "read by people, checked for presence by serde")]
    description: String,
    messages: Vec<Message>,
}

/// One message of a vector, as its JSON spells it.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    /// A `u64` in decimal: JSON numbers lose precision past 2^53.
    id: String,
    source: u32,
    priority: u8,
    topic: String,
    headers: Vec<(String, String)>,
    /// The payload in base64; absent when the payload was omitted.
    #[serde(default)]
    payload: Option<String>,
    /// The payload length alone, when the payload was omitted (flags bit 0).
    #[serde(default)]
    payload_omitted: Option<usize>,
}

impl Message {
    fn write(&self, out: &mut Vec<u8>) {
        let id = self.id.parse().expect("id is a u64 in decimal");
        let head = Head { id, source: self.source, priority: self.priority, topic: &self.topic };
        let headers = self.headers.iter().map(|(name, value)| (name.as_str(), value.as_str()));
        let bytes;
        let payload = match (&self.payload, self.payload_omitted) {
            (Some(base64), None) => {
                bytes = BASE64.decode(base64).expect("payload is base64");
                Payload::Bytes(&bytes)
            }
            (None, Some(len)) => Payload::Omitted(len),
            _ => panic!("a message has exactly one of `payload` and `payload_omitted`"),
        };
        write_message(out, &head, headers, payload);
    }

    fn read(message: &MessageRef<'_>) -> Message {
        Message {
            id: message.id.to_string(),
            source: message.source,
            priority: message.priority,
            topic: message.topic.to_owned(),
            headers: message.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect(),
            payload: message.payload.map(|bytes| BASE64.encode(bytes)),
            payload_omitted: message.payload.is_none().then_some(message.payload_len),
        }
    }
}

/// Every vector of `vectors/{dir}` as `(name, json, bin)`, sorted by name.
fn vector_files<T: serde::de::DeserializeOwned>(dir: &str) -> Vec<(String, T, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors").join(dir);
    let mut jsons: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read a vectors directory")
        .map(|entry| entry.expect("read a vectors entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
        .collect();
    jsons.sort();
    jsons
        .into_iter()
        .map(|json| {
            let name = json.file_stem().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&json).expect("read a vector's json");
            let vector = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{name}.json: {err}"));
            let bin =
                std::fs::read(json.with_extension("bin")).unwrap_or_else(|err| panic!("{name}.bin: {err}"));
            (name, vector, bin)
        })
        .collect()
}

/// Every batch vector, sorted by name.
fn vectors() -> Vec<(String, Vector, Vec<u8>)> {
    vector_files("")
}

#[test]
fn every_golden_vector_decodes_to_its_json() {
    for (name, vector, bin) in vectors() {
        let decoded: Vec<Message> =
            decode(&bin).map(|message| Message::read(&message.expect(&name))).collect();
        assert_eq!(decoded, vector.messages, "{name}.bin");
    }
}

#[test]
fn every_golden_vector_encodes_to_exactly_its_bin() {
    for (name, vector, bin) in vectors() {
        let mut encoded = Vec::new();
        for message in &vector.messages {
            message.write(&mut encoded);
        }
        assert!(encoded == bin, "{name}.json encodes to other bytes than {name}.bin");
    }
}

#[test]
fn the_golden_vectors_cover_what_the_spec_promises() {
    let names: Vec<String> = vectors().into_iter().map(|(name, ..)| name).collect();
    let promised = [
        "binary-payload",
        "byte-order-mark",
        "empty-batch",
        "empty-strings",
        "headers",
        "heads-only",
        "large-lengths",
        "many-messages",
        "one-message",
        "priorities",
        "utf8-topic",
    ];
    assert_eq!(names, promised);
}

/// One `decisions/NAME.json`: a filter's answer.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionsVector {
    #[expect(dead_code, reason = "read by people, checked for presence by serde")]
    description: String,
    decisions: Vec<Decision>,
    /// `(name, delta)`, the delta a `u64` in decimal.
    counts: Vec<(String, String)>,
}

/// One decision, as a vector's JSON spells it: `"keep"`, `"drop"` or `{"rejected": reason}` and so on.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Decision {
    Keep,
    Drop,
    Rejected(String),
    Retryable(String),
    Failed(String),
}

impl Decision {
    fn read(decision: Result<bool, Failure>) -> Decision {
        match decision {
            Ok(true) => Decision::Keep,
            Ok(false) => Decision::Drop,
            Err(Failure { kind: ErrorKind::Rejected, message }) => Decision::Rejected(message),
            Err(Failure { kind: ErrorKind::Retryable, message }) => Decision::Retryable(message),
            Err(Failure { kind: ErrorKind::Failed, message }) => Decision::Failed(message),
        }
    }

    fn wire(&self) -> Result<bool, (ErrorKind, &str)> {
        match self {
            Decision::Keep => Ok(true),
            Decision::Drop => Ok(false),
            Decision::Rejected(reason) => Err((ErrorKind::Rejected, reason)),
            Decision::Retryable(reason) => Err((ErrorKind::Retryable, reason)),
            Decision::Failed(reason) => Err((ErrorKind::Failed, reason)),
        }
    }
}

#[test]
fn every_decisions_vector_reads_as_its_json_and_is_written_as_its_bin() {
    let vectors = vector_files::<DecisionsVector>("decisions");
    let names: Vec<&str> = vectors.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(names, ["empty", "errors", "utf8-and-large-delta", "verdicts-and-counts"]);
    for (name, vector, bin) in vectors {
        let mut counts = Vec::new();
        let decisions = read_decisions(&bin, |name, delta| counts.push((name.to_owned(), delta.to_string())))
            .unwrap_or_else(|err| panic!("{name}.bin: {err}"));
        let decisions: Vec<Decision> = decisions.into_iter().map(Decision::read).collect();
        assert_eq!(decisions, vector.decisions, "{name}.bin");
        assert_eq!(counts, vector.counts, "{name}.bin");
        let mut answer = DecisionsWriter::default();
        for decision in &vector.decisions {
            answer.decision(decision.wire());
        }
        for (counter, delta) in &vector.counts {
            answer.count(counter, delta.parse().expect("a count's delta is a u64 in decimal"));
        }
        assert!(answer.finish() == bin, "{name}.json encodes to other bytes than {name}.bin");
    }
}
