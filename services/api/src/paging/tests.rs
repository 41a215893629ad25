//! The page size and token rules on their own; the listings are paged end to end in `tests/paging.rs`.

use std::collections::BTreeMap;

use tonic::Code;

use super::*;

fn refused_naming(result: Result<Page, Status>, field: &str) {
    let status = result.err().expect("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(field), "{status:?} names {field}");
}

#[test]
fn a_page_size_of_zero_means_the_default_and_a_larger_one_is_taken_as_the_maximum() {
    let items = |n: usize| (0..n).map(|i| (i, i));
    assert_eq!(
        Page::new("l".into(), 0, "").unwrap().take(items(5000)).0.len(),
        DEFAULT_PAGE_SIZE
    );
    assert_eq!(Page::new("l".into(), 7, "").unwrap().take(items(5000)).0.len(), 7);
    assert_eq!(
        Page::new("l".into(), 1000, "").unwrap().take(items(5000)).0.len(),
        MAX_PAGE_SIZE
    );
    assert_eq!(
        Page::new("l".into(), 1001, "").unwrap().take(items(5000)).0.len(),
        MAX_PAGE_SIZE
    );
    assert_eq!(
        Page::new("l".into(), i32::MAX, "").unwrap().take(items(5000)).0.len(),
        MAX_PAGE_SIZE
    );
}

#[test]
fn a_negative_page_size_is_refused_naming_it() {
    refused_naming(Page::new("l".into(), -1, ""), "page_size");
    refused_naming(Page::new("l".into(), i32::MIN, ""), "page_size");
}

#[test]
fn the_last_page_has_no_token_and_a_full_one_continues_after_its_last_key() {
    let map: BTreeMap<String, u32> = (0..5).map(|i| (format!("k{i}"), i)).collect();
    let first = Page::new("l".into(), 2, "").unwrap();
    let (items, token) = first.take(past(&map, None::<&str>));
    assert_eq!(items, [&0, &1]);
    let second = Page::new("l".into(), 2, &token).unwrap();
    assert_eq!(second.after::<String>().unwrap().as_deref(), Some("k1"));
    let (items, token) = second.take(past(&map, second.after::<String>().unwrap().as_deref()));
    assert_eq!(items, [&2, &3]);
    let third = Page::new("l".into(), 2, &token).unwrap();
    let (items, token) = third.take(past(&map, third.after::<String>().unwrap().as_deref()));
    assert_eq!(items, [&4]);
    assert_eq!(token, "");
    // A page exactly as long as what is left is the last one as well.
    let exact = Page::new("l".into(), 5, "").unwrap();
    assert_eq!(exact.take(past(&map, None::<&str>)).1, "");
}

#[test]
fn a_token_that_gofer_did_not_give_is_refused_naming_it() {
    for token in ["not base64!", "%%%", "aGVsbG8", "_w"] {
        refused_naming(Page::new("l".into(), 0, token), "page_token");
    }
    // Base64 of a listing with an empty key, and of bytes that are not UTF-8.
    refused_naming(Page::new("l".into(), 0, &URL_SAFE_NO_PAD.encode("l\n")), "page_token");
    refused_naming(
        Page::new("l".into(), 0, &URL_SAFE_NO_PAD.encode([0xff, b'\n', b'k'])),
        "page_token",
    );
}

#[test]
fn a_token_of_another_listing_is_refused_naming_it() {
    let token = encode("runs default/a", &7);
    assert!(Page::new("runs default/a".into(), 0, &token).is_ok());
    refused_naming(Page::new("runs default/b".into(), 0, &token), "page_token");
    refused_naming(Page::new("tokens".into(), 0, &token), "page_token");
}

#[test]
fn a_key_that_is_not_of_the_listing_kind_is_refused_naming_the_token() {
    let page = Page::new("runs default/a".into(), 0, &encode("runs default/a", &"seven")).unwrap();
    let status = page.after::<u64>().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("page_token"), "{status:?}");
}
