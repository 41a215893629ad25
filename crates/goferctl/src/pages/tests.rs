//! Paging against a stand-in for the server: all pages by default, `--limit` stops early, and a server
//! that repeats a token is not followed for ever.

use super::*;

/// A server that lists `0..total` in pages of the size asked (100 if 0, at most 1000), its tokens the
/// next item's index; it records the page sizes it was asked for.
fn server(total: u32, asked: &mut Vec<i32>) -> impl AsyncFnMut(i32, String) -> Result<(Vec<u32>, String), Status> {
    async move |page_size, token| {
        asked.push(page_size);
        let start: u32 = if token.is_empty() {
            0
        } else {
            token.parse().map_err(|_| Status::invalid_argument("page_token"))?
        };
        let size = match page_size {
            0 => 100,
            size => size.min(1000) as u32,
        };
        let end = (start + size).min(total);
        let next = if end < total { end.to_string() } else { String::new() };
        Ok(((start..end).collect(), next))
    }
}

fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn limit(n: u64) -> Limit {
    Limit { limit: Some(n) }
}

#[test]
fn without_a_limit_every_page_is_followed() {
    let mut asked = Vec::new();
    let items = run(collect(Limit::ALL, server(250, &mut asked))).ok().unwrap();
    assert_eq!(items, (0..250).collect::<Vec<_>>());
    assert_eq!(asked, [100, 100, 100]);
}

#[test]
fn a_limit_stops_early_and_asks_for_no_more_than_it_needs() {
    let mut asked = Vec::new();
    let items = run(collect(limit(120), server(250, &mut asked))).ok().unwrap();
    assert_eq!(items, (0..120).collect::<Vec<_>>());
    assert_eq!(asked, [100, 20]);

    let mut asked = Vec::new();
    let items = run(collect(limit(5), server(250, &mut asked))).ok().unwrap();
    assert_eq!(items, [0, 1, 2, 3, 4]);
    assert_eq!(asked, [5]);

    // A limit past the end lists everything there is.
    let mut asked = Vec::new();
    let items = run(collect(limit(1000), server(30, &mut asked))).ok().unwrap();
    assert_eq!(items.len(), 30);
}

#[test]
fn a_server_that_gives_more_than_asked_is_cut_at_the_limit() {
    let generous = async |_: i32, _: String| Ok(((0..50).collect::<Vec<u32>>(), "more".to_string()));
    let items = run(collect(limit(7), generous)).ok().unwrap();
    assert_eq!(items.len(), 7);
}

#[test]
fn a_server_that_repeats_its_token_is_not_followed_for_ever() {
    let stuck = async |_: i32, _: String| Ok((vec![1u32], "same".to_string()));
    let failure = run(collect(Limit::ALL, stuck)).expect_err("stopped");
    assert!(failure.0.contains("same page token"), "{}", failure.0);
}
