//! Proptest strategies shared by the workspace's property tests (behind the
//! `proptest` feature, and in this crate's own tests): bodies that are hard
//! to measure once JSON-escaped, for the server's size checks and the
//! clients' (which must refuse exactly what the server refuses).

/// Pieces of adversarial bodies: what JSON escapes (quote, backslash,
/// every control character), what it does not but is easy to miscount
/// (U+007F, 2- and 4-byte UTF-8), and HTML-looking text.
pub fn adversarial_piece() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        (0u32..=0x1f).prop_map(|c| char::from_u32(c).unwrap_or('\0').to_string()),
        Just("\u{7f}".to_owned()),
        Just("😀".to_owned()),
        Just("é".to_owned()),
        Just("\u{2028}".to_owned()),
        Just("</script>".to_owned()),
        Just("a".to_owned()),
        Just(" ".to_owned()),
    ]
}

pub fn adversarial_body(
    pieces: std::ops::Range<usize>,
) -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    proptest::collection::vec(adversarial_piece(), pieces).prop_map(|v| v.concat())
}
