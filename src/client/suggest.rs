//! "Did you mean": the names close to a mistyped one, or all of them when they are few.

/// Names listed in full when none is close.
const LIST_AT_MOST: usize = 8;

/// The end of a "not found" message about `wanted` among `names` (`kind`: "templates",
/// "local VMs", "tags"): the close names, else all of them when few, else nothing.
pub fn hint(wanted: &str, names: &[String], kind: &str) -> String {
    let limit = (wanted.chars().count() / 3).max(1);
    let mut close: Vec<(usize, &String)> = names
        .iter()
        .map(|n| (distance(&wanted.to_lowercase(), &n.to_lowercase()), n))
        .filter(|(d, _)| *d <= limit)
        .collect();
    close.sort();
    close.dedup_by(|a, b| a.1 == b.1);
    match (close.as_slice(), names.len()) {
        ([], 0) => format!("; there are no {kind}"),
        ([], n) if n <= LIST_AT_MOST => format!("; the {kind}: {}", names.join(", ")),
        ([], _) => String::new(),
        (close, _) => {
            let quoted: Vec<String> = close
                .iter()
                .take(3)
                .map(|(_, n)| format!("{n:?}"))
                .collect();
            format!("; did you mean {}?", quoted.join(" or "))
        }
    }
}

/// Levenshtein distance, by characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn close_names_are_suggested_and_few_are_listed() {
        let all = names(&["sonoma", "ventura", "sequoia"]);
        assert_eq!(
            hint("sonomaa", &all, "templates"),
            "; did you mean \"sonoma\"?"
        );
        assert_eq!(
            hint("Sonoma", &all, "templates"),
            "; did you mean \"sonoma\"?"
        );
        assert_eq!(
            hint("xcode", &all, "templates"),
            "; the templates: sonoma, ventura, sequoia"
        );
        assert_eq!(hint("x", &[], "tags"), "; there are no tags");
        let many: Vec<String> = (0..20).map(|i| format!("template-{i:02}")).collect();
        assert_eq!(hint("zzzzzzzz", &many, "templates"), "");
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
