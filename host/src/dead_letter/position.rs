//! A place in the dead-letter file, and the text that names it.

/// Where a read of the file starts: at its head, or where a batch ended. Past the head it is a
/// place in the file as it was when read: read after that file was removed, replaced or rewritten
/// (the letters removed cut out of it), it finds nothing (read again from the head). Written as text
/// (`Display`, `FromStr`), it is the cursor of `GET /v1/dead-letters?after=`, good while the
/// host runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The generation of the file's letters it is a place in (how many times they moved, counted
    /// by the [`DeadLetterFile`](super::DeadLetterFile)), unless it is the head of whatever file.
    pub(super) generation: Option<u64>,
    /// The byte it is at.
    pub(super) at: u64,
}

impl Position {
    /// The first letter of the file.
    pub const HEAD: Position = Position { generation: None, at: 0 };
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.generation {
            Some(generation) => write!(f, "{generation}-{}", self.at),
            None => write!(f, "head"),
        }
    }
}

/// Text that is not a [`Position`] as `Display` writes one.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a place in the dead-letter file (one is given as `next` of a listing)")]
pub struct PositionError(String);

impl std::str::FromStr for Position {
    type Err = PositionError;

    fn from_str(text: &str) -> Result<Position, PositionError> {
        if text == "head" {
            return Ok(Position::HEAD);
        }
        let error = || PositionError(text.to_owned());
        let (generation, at) = text.split_once('-').ok_or_else(error)?;
        let (generation, at) = (generation.parse().map_err(|_| error())?, at.parse().map_err(|_| error())?);
        Ok(Position { generation: Some(generation), at })
    }
}

impl serde::Serialize for Position {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Position {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Position, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}
