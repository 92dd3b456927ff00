//! Text from plugins and peers, made safe to print and to carry in a header:
//! one line (control characters escaped) of bounded length.

/// The longest error text from a plugin or a peer that the host keeps (to log it, dead-letter a
/// message with it, or answer a caller with it), in bytes.
pub(crate) const MAX_ERROR_TEXT: usize = 1024;

/// A plugin's (an embedder's stage's too) or a peer's error `text` as the host keeps it:
/// [`one_line`] of at most [`MAX_ERROR_TEXT`] bytes, so it can neither forge log lines nor fill
/// the log.
pub(crate) fn error_text(text: &str) -> String {
    one_line(text, MAX_ERROR_TEXT)
}

/// `text` with control characters escaped (`\n`, `\r`, `\t`, `\u{1b}`), cut
/// to at most `max` bytes at a character boundary and ended with `...` when
/// longer.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        let start = line.len();
        match c.is_control() {
            true => line.extend(c.escape_default()),
            false => line.push(c),
        }
        if line.len() > max {
            line.truncate(start);
            line.push_str("...");
            break;
        }
    }
    line
}
