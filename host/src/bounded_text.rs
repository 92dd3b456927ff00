//! Text from plugins and peers, made safe to print and to carry in a header:
//! one line (control characters escaped) of bounded length.

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
