//! Following a List call's pages: every list command shows everything, page after page, unless
//! `--limit` stops it early. The server cuts the pages and keeps their order; this only asks for the
//! next one until none is left.

use tonic::Status;

use crate::client;
use crate::failure::Failure;

/// How many items goferctl asks for in one page: the server's default page.
const PAGE_SIZE: usize = 100;

/// `--limit`, which every list command takes.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct Limit {
    /// Show at most this many [default: all, page after page]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

impl Limit {
    /// Every item, however many pages they take.
    pub const ALL: Limit = Limit { limit: None };

    /// How many more items to ask for once `seen` came, if there is a limit.
    fn remaining(self, seen: usize) -> Option<usize> {
        self.limit
            .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX).saturating_sub(seen))
    }
}

/// Calls `list` with a page size and a page token, from the first page on, until a page comes back
/// without a next token or `limit` items came; returns the items in the server's order.
pub async fn collect<T>(
    limit: Limit,
    mut list: impl AsyncFnMut(i32, String) -> Result<(Vec<T>, String), Status>,
) -> Result<Vec<T>, Failure> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let wanted = limit
            .remaining(items.len())
            .map_or(PAGE_SIZE, |left| left.min(PAGE_SIZE));
        let page_size = i32::try_from(wanted).unwrap_or(i32::MAX);
        let (page, next) = list(page_size, token.clone()).await.map_err(client::status)?;
        items.extend(page);
        if let Some(0) = limit.remaining(items.len()) {
            if let Some(limit) = limit.limit {
                items.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            }
            return Ok(items);
        }
        if next.is_empty() {
            return Ok(items);
        }
        if next == token {
            // A server that answered with the token it was given would be listed for ever.
            return Err(Failure(
                "the server gave the same page token twice; stopped listing".into(),
            ));
        }
        token = next;
    }
}

#[cfg(test)]
mod tests;
