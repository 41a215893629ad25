//! Paging of the List calls (AIP-158): how a call reads `page_size` and `page_token`, and how it cuts
//! the page and makes the `next_page_token`. It knows no list: each handler hands it the listing's items
//! in their stable order, starting past the key the token carries.
//!
//! A page token is the base64 of the listing it belongs to and the key of the last item returned, so the
//! next page starts right after that item however the list changed meanwhile: items added or removed
//! never make a listing skip or repeat one that was there all along. Tokens never expire, since a key
//! keeps its place in the order. A token is opaque to clients, but it grants nothing: what a page holds
//! is still only what the caller may see.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt::Display;
use std::ops::Bound;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gofer_domain::Error;
use gofer_proto::into_status;
use tonic::Status;

/// How many items a page holds when the request leaves `page_size` at 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The most items a page holds; a larger `page_size` is taken as this.
pub const MAX_PAGE_SIZE: usize = 1000;

/// One List call's page: which listing, how many items, and after which key.
pub(crate) struct Page {
    /// What the listing is and whose, such as `runs default/hello`; a token of another listing is
    /// refused.
    listing: String,
    size: usize,
    /// The key of the last item of the page before, as the token carries it.
    after: Option<String>,
}

impl Page {
    /// Reads a request's `page_size` and `page_token` for `listing`.
    #[allow(clippy::result_large_err)]
    pub(crate) fn new(listing: String, page_size: i32, page_token: &str) -> Result<Page, Status> {
        let size = match usize::try_from(page_size) {
            Err(_) => return Err(into_status(Error::invalid("page_size", "must not be negative"))),
            Ok(0) => DEFAULT_PAGE_SIZE,
            Ok(size) => size.min(MAX_PAGE_SIZE),
        };
        let after = match page_token {
            "" => None,
            token => Some(decode(&listing, token).map_err(into_status)?),
        };
        Ok(Page { listing, size, after })
    }

    /// The key the page starts after, read as the listing's keys are (`None` for the first page).
    #[allow(clippy::result_large_err)]
    pub(crate) fn after<K: FromStr>(&self) -> Result<Option<K>, Status> {
        self.after
            .as_deref()
            .map(|key| key.parse().map_err(|_| into_status(not_a_token())))
            .transpose()
    }

    /// Cuts the page from `items`, the listing's `(key, item)`s in order from the first past the page's
    /// start; returns it and the token of the next page, empty when none follows.
    pub(crate) fn take<K: Display, T>(&self, items: impl IntoIterator<Item = (K, T)>) -> (Vec<T>, String) {
        let mut page = Vec::new();
        let mut last = None;
        for (key, item) in items {
            if page.len() == self.size {
                // A page holds at least one item, so a full one has a last key.
                return (page, last.map(|key| encode(&self.listing, &key)).unwrap_or_default());
            }
            last = Some(key);
            page.push(item);
        }
        (page, String::new())
    }
}

/// The items of `map` past `after` (all of them without it), by key.
pub(crate) fn past<'m, K, V, Q>(
    map: &'m BTreeMap<K, V>,
    after: Option<&Q>,
) -> std::collections::btree_map::Range<'m, K, V>
where
    K: Borrow<Q> + Ord,
    Q: Ord + ?Sized,
{
    match after {
        Some(after) => map.range::<Q, _>((Bound::Excluded(after), Bound::Unbounded)),
        None => map.range::<Q, _>(..),
    }
}

fn encode(listing: &str, key: &impl Display) -> String {
    URL_SAFE_NO_PAD.encode(format!("{listing}\n{key}"))
}

fn decode(listing: &str, token: &str) -> Result<String, Error> {
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| not_a_token())?;
    let text = String::from_utf8(bytes).map_err(|_| not_a_token())?;
    let (of, key) = text.split_once('\n').ok_or_else(not_a_token)?;
    if key.is_empty() {
        return Err(not_a_token());
    }
    if of != listing {
        return Err(Error::invalid(
            "page_token",
            "belongs to another listing: pass the request of the page before unchanged but for its page_token",
        ));
    }
    Ok(key.to_string())
}

fn not_a_token() -> Error {
    Error::invalid("page_token", "is not a page token Gofer gave")
}

#[cfg(test)]
mod tests;
