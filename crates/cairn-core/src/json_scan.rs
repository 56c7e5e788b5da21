//! A scan of JSON text's structure without parsing it: what a parse would build is bounded
//! (how many values, how deep) before any of it is built. Used by the server to weigh request
//! bodies and by the client to refuse answers nested past its parser's stack.

/// The structure of a JSON text, read by [`scan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// An upper bound on the values: one, plus one for each `[`, `{` and `,` outside strings
    /// (an empty array or object counts two).
    pub values: usize,
    /// The deepest nesting of arrays and objects.
    pub depth: usize,
}

/// Scans `text` (brackets and commas inside strings ignored). Text that is not JSON scans the
/// same way; its parse refuses it.
pub fn scan(text: &[u8]) -> Shape {
    let (mut values, mut depth, mut max) = (0usize, 0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in text {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'[' | b'{') => {
                values += 1;
                depth += 1;
                max = max.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            (false, _, b',') => values += 1,
            _ => {}
        }
    }
    let values = values + usize::from(!text.iter().all(u8::is_ascii_whitespace));
    Shape { values, depth: max }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_and_depth_are_counted_outside_strings() {
        for (text, values, depth) in [
            ("", 0, 0),
            ("  ", 0, 0),
            ("0", 1, 0),
            ("[]", 2, 1),
            ("[0,0,0]", 4, 1),
            (r#"{"a":[1,2],"b":{}}"#, 6, 2),
            (r#"{"a,[{":"\",[{"}"#, 2, 1),
            (r#"["\\",1]"#, 3, 1),
            (r#"{"a\"[":[{}]}"#, 4, 3),
        ] {
            assert_eq!(scan(text.as_bytes()), Shape { values, depth }, "{text}");
        }
        let s = format!(r#"{{"a":"{}"}}"#, "[".repeat(5000));
        assert_eq!(scan(s.as_bytes()).depth, 1);
    }
}
