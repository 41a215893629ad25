//! Request ids: what makes a run start safe to repeat must not repeat by chance.

#[test]
fn request_ids_are_128_random_bits_in_hex() {
    let ids: Vec<String> = (0..100)
        .map(|_| super::new_request_id().unwrap_or_else(|f| panic!("{}", f.0)))
        .collect();
    for id in &ids {
        assert_eq!(id.len(), 32, "{id}");
        assert!(
            id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
            "{id}"
        );
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
}
