//! The CSV export's rows.

use purser_core::Catalog;
use serde_json::Value;

use super::describe;

/// The CSV export's columns.
pub const CSV_HEADER: &str = "id,created_at,type,description,credits,available_after,held_after,debt_after,task,quantity,member,grant_kind,object\r\n";

/// One transaction as a CSV row (RFC 4180 quoting; a text cell that a
/// spreadsheet would read as a formula is prefixed with `'`).
pub fn csv_row(out: &mut String, tx: &Value, catalog: &Catalog) {
    let (what, details) = describe(tx, catalog);
    let text = |name: &str| tx[name].as_str().unwrap_or("").to_owned();
    let object = ["debit", "hold", "grant", "purchase"]
        .iter()
        .find_map(|name| tx[*name].as_str())
        .unwrap_or("")
        .to_owned();
    let description = if details.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {details}")
    };
    let cells = [
        text("id"),
        text("created_at"),
        text("type"),
        description,
        text("credits"),
        tx["balance_after"]["available"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        tx["balance_after"]["held"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        tx["balance_after"]["debt"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        text("task"),
        text("quantity"),
        text("member"),
        text("kind"),
        object,
    ];
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        csv_cell(out, cell, index >= 3 && index != 4);
    }
    out.push_str("\r\n");
}

fn csv_cell(out: &mut String, cell: &str, text: bool) {
    let guarded = text && cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if guarded || cell.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if guarded {
            out.push('\'');
        }
        out.push_str(&cell.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_rows_quote_and_guard() {
        let mut out = String::new();
        let tx = json!({
            "id": "txn_1", "created_at": "2026-11-01T00:00:00Z", "type": "debit",
            "credits": "-1.5", "task": "assistant_message", "quantity": "3",
            "member": "-ann", "debit": "deb_1",
            "balance_after": {"available": "98.5", "held": "0", "debt": "0"},
        });
        csv_row(&mut out, &tx, &Catalog::builtin());
        assert_eq!(
            out,
            "txn_1,2026-11-01T00:00:00Z,debit,Charge: Assistant conversation · 3 messages · -ann,-1.5,98.5,0,0,assistant_message,3,\"'-ann\",,deb_1\r\n"
        );
    }
}
