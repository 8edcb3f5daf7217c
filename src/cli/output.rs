//! Results on stdout: JSON with `--json`, otherwise short human lines and tables.

use serde::Serialize;

use crate::client::{ClientError, ClientResult};

/// Prints a value as one line of JSON.
pub fn json<T: Serialize>(value: &T) -> ClientResult<()> {
    let text = serde_json::to_string(value)
        .map_err(|e| ClientError::Invalid(format!("cannot print JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

pub use crate::units::human_size as size;

/// Prints rows as left-aligned columns under a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}
