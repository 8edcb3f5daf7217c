//! Listings with the spec's pagination: `_catalog` (repositories) and `tags/list`, sorted
//! lexically, `n` at a time after `last`.

use super::{validate_repo, OciError, OciResult};
use crate::meta::keys;
use crate::registry::Registry;

/// Most entries one page holds, whatever `n` asks; the `Link` of the page leads on.
pub const MAX_PAGE: usize = 1000;

/// One page of a sorted listing.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// The entries, sorted.
    pub items: Vec<String>,
    /// True when entries follow the last one given.
    pub more: bool,
}

impl Page {
    /// The entries of `all` after `last`, at most `n` (and [`MAX_PAGE`]).
    pub fn of(mut all: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page {
        all.sort();
        all.dedup();
        let start = last.map_or(0, |l| all.partition_point(|x| x.as_str() <= l));
        let n = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
        let rest = all.len() - start;
        Page {
            items: all.into_iter().skip(start).take(n).collect(),
            // `n=0` asks for nothing, and a link onwards would ask for nothing again.
            more: n > 0 && rest > n,
        }
    }
}

/// Reads `n` as the spec writes it: a non-negative number.
pub fn page_size(n: Option<&str>) -> OciResult<Option<usize>> {
    n.map(|n| n.parse().map_err(|_| OciError::PaginationInvalid))
        .transpose()
}

impl Registry {
    /// A page of the tags of a repository.
    pub async fn oci_tags(
        &self,
        repo: &str,
        n: Option<usize>,
        last: Option<&str>,
    ) -> OciResult<Page> {
        validate_repo(repo)?;
        let tags = self.meta().members(&keys::oci_tags(repo)).await?;
        if tags.is_empty() && !self.oci_repos().await?.iter().any(|r| r == repo) {
            return Err(OciError::NameUnknown);
        }
        Ok(Page::of(tags, n, last))
    }

    /// A page of the repository names.
    pub async fn oci_catalog(&self, n: Option<usize>, last: Option<&str>) -> OciResult<Page> {
        Ok(Page::of(self.oci_repos().await?, n, last))
    }

    async fn oci_repos(&self) -> OciResult<Vec<String>> {
        Ok(self.meta().members(keys::OCI_REPOS).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_follow_last_and_n() {
        let all = names(&["c", "a", "b", "d"]);
        let first = Page::of(all.clone(), Some(2), None);
        assert_eq!(
            (first.items.clone(), first.more),
            (names(&["a", "b"]), true)
        );
        let second = Page::of(all.clone(), Some(2), Some("b"));
        assert_eq!((second.items, second.more), (names(&["c", "d"]), false));
        let between = Page::of(all.clone(), None, Some("bb"));
        assert_eq!(between.items, names(&["c", "d"]));
        let none = Page::of(all.clone(), Some(0), None);
        assert_eq!((none.items.len(), none.more), (0, false));
        assert_eq!(Page::of(all, Some(9), Some("z")).items.len(), 0);
        assert!(matches!(
            page_size(Some("-1")),
            Err(OciError::PaginationInvalid)
        ));
        assert_eq!(page_size(Some("5")).ok(), Some(Some(5)));
    }
}
