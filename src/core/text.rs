//! Text cut to a length for messages a person reads: an error body, a malformed frame,
//! a build line. Knows characters, not where the text came from or how it is shown
//! (front ends neutralise it for a terminal).

/// `text` cut to at most `max` characters, with `…` when something was cut.
pub fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_on_characters_with_a_mark() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("abcdef", 3), "abc…");
        assert_eq!(shorten("ééé", 2), "éé…");
        assert_eq!(shorten("", 0), "");
    }
}
