//! `vigil export --since D [--host H] [--family F] --format csv|jsonl`: stored samples to stdout, streamed row by row
//! from the database (read-only).

use std::io::Write;
use std::process::ExitCode;

use serde_json::{Map, Value};
use vigil_server::store::Store;
use vigil_server::store::web::{Cell, export_columns, export_families};

use super::{Files, Out};

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated, one header line (needs `--family`: the columns differ per family).
    Csv,
    /// One JSON object per line, with its `family`.
    Jsonl,
}

/// clap's value parser of `--family`.
pub fn parse_family(text: &str) -> Result<String, String> {
    if export_columns(text).is_some() {
        Ok(text.to_owned())
    } else {
        Err(format!("unknown family; expected one of {}", export_families().collect::<Vec<_>>().join(", ")))
    }
}

/// Why an export stopped.
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error(transparent)]
    Store(#[from] vigil_server::store::StoreError),
    #[error(transparent)]
    Write(#[from] std::io::Error),
}

pub fn run(
    files: &Files,
    since_ms_back: i64,
    host: Option<&str>,
    family: Option<&str>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    if format == Format::Csv && family.is_none() {
        anyhow::bail!("--format csv needs --family (its columns differ per family); or use --format jsonl");
    }
    let (config, _) = files.load_for_view()?;
    let since_ms = vigil_sys::clock::now_ms().saturating_sub(since_ms_back);
    let store = Store::open_server_readonly(&config.server)?;
    let mut out = Out::new();
    let families: Vec<&str> = match family {
        Some(f) => vec![f],
        None => export_families().collect(),
    };
    for family in families {
        let columns = export_columns(family).unwrap_or_default();
        let mut line = String::new();
        if format == Format::Csv {
            let header: Vec<&str> = ["host", "ts_ms"].into_iter().chain(columns.iter().copied()).collect();
            writeln!(out, "{}", header.join(","))?;
        }
        store.export(family, host, since_ms, |h, ts, cells| -> Result<(), ExportError> {
            line.clear();
            match format {
                Format::Csv => csv_line(&mut line, h, ts, cells),
                Format::Jsonl => json_line(&mut line, family, columns, h, ts, cells),
            }
            out.write_all(line.as_bytes())?;
            Ok(())
        })?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// A CSV field, quoted when it holds a comma, quote or line break (RFC 4180).
fn csv_field(line: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        line.push('"');
        line.push_str(&s.replace('"', "\"\""));
        line.push('"');
    } else {
        line.push_str(s);
    }
}

fn csv_line(line: &mut String, host: &str, ts: i64, cells: &[Cell]) {
    csv_field(line, host);
    line.push(',');
    line.push_str(&ts.to_string());
    for c in cells {
        line.push(',');
        match c {
            Cell::Null => {}
            Cell::Int(n) => line.push_str(&n.to_string()),
            Cell::Real(x) => line.push_str(&x.to_string()),
            Cell::Text(t) => csv_field(line, t),
        }
    }
    line.push('\n');
}

fn json_line(line: &mut String, family: &str, columns: &[&str], host: &str, ts: i64, cells: &[Cell]) {
    let mut m = Map::new();
    m.insert("family".into(), family.into());
    m.insert("host".into(), host.into());
    m.insert("ts_ms".into(), ts.into());
    for (name, c) in columns.iter().zip(cells) {
        let v = match c {
            Cell::Null => Value::Null,
            Cell::Int(n) => (*n).into(),
            Cell::Real(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
            Cell::Text(t) => t.as_str().into(),
        };
        m.insert((*name).into(), v);
    }
    line.push_str(&Value::Object(m).to_string());
    line.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_needs_quoting_and_leaves_nulls_empty() {
        let mut l = String::new();
        csv_line(&mut l, "h", 5, &[Cell::Text("a,\"b\"".into()), Cell::Null, Cell::Int(3), Cell::Real(0.5)]);
        assert_eq!(l, "h,5,\"a,\"\"b\"\"\",,3,0.5\n");
        let mut j = String::new();
        json_line(&mut j, "cpu", &["x", "y"], "h", 5, &[Cell::Real(1.5), Cell::Null]);
        assert_eq!(j, "{\"family\":\"cpu\",\"host\":\"h\",\"ts_ms\":5,\"x\":1.5,\"y\":null}\n");
    }
}
