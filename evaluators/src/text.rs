//! Cutting text to a size in bytes without splitting a character: every place that bounds what
//! it keeps, scans or sends (a scan cap, an attribute cap, a dead letter's header) cuts the same
//! way.

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
pub fn prefix_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_on_a_character_boundary() {
        assert_eq!(prefix_bytes("abc", 10), "abc");
        assert_eq!(prefix_bytes("abc", 2), "ab");
        // `é` is two bytes: a cut inside it steps back.
        assert_eq!(prefix_bytes("aé", 2), "a");
        assert_eq!(prefix_bytes("aé", 3), "aé");
        assert_eq!(prefix_bytes("é", 0), "");
    }
}
