//! The one output seam: every table and every JSON line kscope prints to
//! stdout goes through an [`Output`].
//!
//! A verb describes its rows once, as [`Column`]s (a table header, a JSON
//! key, a width), and writes each row's cells in that order through a
//! [`Row`]. The same description renders as an aligned table or as one JSON
//! object per line, so no verb has a `json: bool` or a JSON writer of its
//! own. Text from outside kscope (process names, paths, arguments) goes in
//! through [`Row::text`], which neutralizes control characters in tables
//! and keeps every byte in JSON: valid UTF-8 (nearly always) is written as
//! is, escaped as JSON requires; otherwise the string holds a readable form
//! (each invalid sequence as U+FFFD) and a second member `KEY_b64` follows
//! with the exact bytes in standard base64 (RFC 4648, padded). `KEY_b64` is
//! there exactly when the bytes are not UTF-8.
//!
//! A JSON row may nest objects and arrays of objects ([`Row::object`],
//! [`Row::objects`]), described by columns of their own, where one JSON
//! line stands for several table rows (`fw stats`: one object per
//! interface, one table row per counter).
//!
//! Nothing is allocated per row.

use std::{
    fmt::Display,
    io::{self, Write},
};

pub mod text;

/// How rows are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns under a header line.
    #[default]
    Table,
    /// One JSON object per row, one per line.
    Json,
}

impl Format {
    pub fn json(json: bool) -> Self {
        if json { Format::Json } else { Format::Table }
    }
}

/// Alignment of a table cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// One column: its table header and width, and its JSON key. A column with
/// no header is JSON-only; one with no key is table-only.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub(crate) head: &'static str,
    pub(crate) key: &'static str,
    width: usize,
    pub(crate) align: Align,
    /// What a table shows for a null cell.
    pub(crate) none: &'static str,
    /// Spaces before this column in a table (unless it comes first).
    pub(crate) gap: usize,
}

impl Column {
    /// A left-aligned column in both formats.
    pub(crate) const fn left(head: &'static str, key: &'static str, width: usize) -> Self {
        Self {
            head,
            key,
            width,
            align: Align::Left,
            none: "-",
            gap: 1,
        }
    }

    /// A right-aligned column in both formats.
    pub(crate) const fn right(head: &'static str, key: &'static str, width: usize) -> Self {
        Self {
            align: Align::Right,
            ..Self::left(head, key, width)
        }
    }

    /// A JSON-only field.
    pub(crate) const fn json(key: &'static str) -> Self {
        Self::left("", key, 0)
    }

    /// A table-only column.
    pub(crate) const fn table(head: &'static str, width: usize, align: Align) -> Self {
        Self {
            align,
            ..Self::left(head, "", width)
        }
    }

    /// The same column, showing `none` for a null cell in a table.
    pub(crate) const fn none(self, none: &'static str) -> Self {
        Self { none, ..self }
    }

    /// The same column, `gap` spaces from the one before it in a table
    /// (one by default).
    pub(crate) const fn gap(self, gap: usize) -> Self {
        Self { gap, ..self }
    }

    fn shown(&self, f: Format) -> bool {
        match f {
            Format::Table => !self.head.is_empty(),
            Format::Json => !self.key.is_empty(),
        }
    }
}

/// Where rows go, how, and when they are flushed.
pub(crate) struct Output<W: Write> {
    w: W,
    format: Format,
    cols: Vec<Column>,
    /// Index of the last column a table shows: it is not padded.
    last: usize,
    header_done: bool,
    /// Rows written since the last flush.
    pending: bool,
}

impl<W: Write> Output<W> {
    pub(crate) fn new(w: W, format: Format, cols: Vec<Column>) -> Self {
        let last = cols
            .iter()
            .rposition(|c| c.shown(Format::Table))
            .unwrap_or(0);
        Self {
            w,
            format,
            cols,
            last,
            header_done: false,
            pending: false,
        }
    }

    /// Writes the table's header line (once; nothing for JSON) and flushes
    /// it, so a terminal shows it before the first row arrives.
    pub(crate) fn header(&mut self) -> io::Result<()> {
        if self.header_done || self.format == Format::Json {
            return Ok(());
        }
        self.header_done = true;
        let mut first = true;
        for (i, c) in self.cols.iter().enumerate() {
            if !c.shown(Format::Table) {
                continue;
            }
            if !first {
                write_gap(&mut self.w, c.gap)?;
            }
            first = false;
            let width = if i == self.last && c.align == Align::Left {
                0
            } else {
                c.width
            };
            match c.align {
                Align::Left => write!(self.w, "{:<width$}", c.head)?,
                Align::Right => write!(self.w, "{:>width$}", c.head)?,
            }
        }
        self.w.write_all(b"\n")?;
        self.w.flush()
    }

    /// Writes one row: `f` writes every column's cell, in column order.
    pub(crate) fn row(
        &mut self,
        f: impl FnOnce(&mut Row<'_, W>) -> io::Result<()>,
    ) -> io::Result<()> {
        self.header()?;
        let mut row = Row {
            w: &mut self.w,
            cols: &self.cols,
            format: self.format,
            last: self.last,
            i: 0,
            first: true,
        };
        if self.format == Format::Json {
            row.w.write_all(b"{")?;
        }
        f(&mut row)?;
        debug_assert_eq!(row.i, self.cols.len(), "a row must write every column");
        match self.format {
            Format::Json => self.w.write_all(b"}\n")?,
            Format::Table => self.w.write_all(b"\n")?,
        }
        self.pending = true;
        Ok(())
    }

    /// Flushes rows written since the last flush. Callers flush once per
    /// batch (a ring-buffer drain, a refresh), so a terminal or a pipe sees
    /// each batch as soon as it is complete.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.pending {
            self.pending = false;
            self.w.flush()?;
        }
        Ok(())
    }

    /// The underlying writer, for callers that print something that is not
    /// a row (a blank line between refreshes).
    pub(crate) fn writer(&mut self) -> &mut W {
        &mut self.w
    }
}

/// The spaces between two table cells: usually one, written without the
/// formatting machinery (tracers write millions of cells).
fn write_gap(w: &mut impl Write, gap: usize) -> io::Result<()> {
    if gap == 1 {
        w.write_all(b" ")
    } else {
        write!(w, "{:gap$}", "")
    }
}

/// The cells of one row, written in column order.
pub struct Row<'a, W: Write> {
    w: &'a mut W,
    cols: &'a [Column],
    format: Format,
    last: usize,
    i: usize,
    first: bool,
}

impl<W: Write> Row<'_, W> {
    /// Advances to the next column; `None` when this format does not show
    /// it (the cell is skipped).
    fn next(&mut self) -> io::Result<Option<Column>> {
        let Some(&c) = self.cols.get(self.i) else {
            return Err(io::Error::other("more cells than columns"));
        };
        let last = self.i == self.last;
        self.i += 1;
        if !c.shown(self.format) {
            return Ok(None);
        }
        if !self.first {
            match self.format {
                Format::Json => self.w.write_all(b",")?,
                Format::Table => write_gap(self.w, c.gap)?,
            }
        }
        self.first = false;
        if self.format == Format::Json {
            write!(self.w, "\"{}\":", c.key)?;
        }
        Ok(Some(Column {
            // The last column of a table is not padded on the right.
            width: if last && c.align == Align::Left {
                0
            } else {
                c.width
            },
            ..c
        }))
    }

    /// A cell from a value that prints as a JSON number (integers, floats).
    fn number(&mut self, v: impl Display) -> io::Result<()> {
        let Some(c) = self.next()? else {
            return Ok(());
        };
        match (self.format, c.align) {
            (Format::Json, _) => write!(self.w, "{v}"),
            (Format::Table, Align::Left) => write!(self.w, "{v:<w$}", w = c.width),
            (Format::Table, Align::Right) => write!(self.w, "{v:>w$}", w = c.width),
        }
    }

    pub(crate) fn u64(&mut self, v: u64) -> io::Result<()> {
        self.number(v)
    }

    pub(crate) fn i64(&mut self, v: i64) -> io::Result<()> {
        self.number(v)
    }

    /// A float with `prec` decimals.
    pub(crate) fn f64(&mut self, v: f64, prec: usize) -> io::Result<()> {
        let Some(c) = self.next()? else {
            return Ok(());
        };
        match (self.format, c.align) {
            // JSON has no NaN or infinity.
            (Format::Json, _) if !v.is_finite() => self.w.write_all(b"null"),
            (Format::Json, _) => write!(self.w, "{v:.prec$}"),
            (Format::Table, Align::Left) => write!(self.w, "{v:<w$.prec$}", w = c.width),
            (Format::Table, Align::Right) => write!(self.w, "{v:>w$.prec$}", w = c.width),
        }
    }

    /// A float with `prec` decimals in a table; in JSON, the shortest text
    /// that reads back as `v` (a rate, an interval: every digit kept).
    pub(crate) fn f64_exact(&mut self, v: f64, prec: usize) -> io::Result<()> {
        if self.format == Format::Table {
            return self.f64(v, prec);
        }
        let Some(_) = self.next()? else {
            return Ok(());
        };
        // serde_json writes a finite float in its shortest round-trip form,
        // and `null` for NaN and infinity, which JSON has not.
        serde_json::to_writer(&mut *self.w, &v).map_err(io::Error::from)
    }

    /// `true`/`false` in both formats.
    pub(crate) fn bool(&mut self, v: bool) -> io::Result<()> {
        self.number(v)
    }

    /// Text from outside kscope (a comm, a path): any bytes.
    pub(crate) fn text(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.text_cut(bytes, false)
    }

    /// [`text`](Self::text) that the kernel cut short when `cut`: a table
    /// shows `...` after it (JSON says so in a field of its own).
    pub(crate) fn text_cut(&mut self, bytes: &[u8], cut: bool) -> io::Result<()> {
        let Some(c) = self.next()? else {
            return Ok(());
        };
        match self.format {
            Format::Json => {
                text::write_json_str(self.w, bytes)?;
                if std::str::from_utf8(bytes).is_err() {
                    write!(self.w, ",\"{}_b64\":\"", c.key)?;
                    text::write_base64(self.w, bytes)?;
                    self.w.write_all(b"\"")?;
                }
                Ok(())
            }
            Format::Table => {
                let marker: &[u8] = if cut { b"..." } else { b"" };
                let pad = c
                    .width
                    .saturating_sub(text::text_width(bytes) + marker.len());
                if c.align == Align::Right {
                    write!(self.w, "{:pad$}", "")?;
                }
                text::write_text(self.w, bytes)?;
                self.w.write_all(marker)?;
                if c.align == Align::Left {
                    write!(self.w, "{:pad$}", "")?;
                }
                Ok(())
            }
        }
    }

    /// kscope's own text (a name, an address): a JSON string.
    pub(crate) fn str(&mut self, s: &str) -> io::Result<()> {
        self.text(s.as_bytes())
    }

    /// Anything with `Display` (an address), as a JSON string.
    pub(crate) fn display(&mut self, v: impl Display) -> io::Result<()> {
        let Some(c) = self.next()? else {
            return Ok(());
        };
        match (self.format, c.align) {
            (Format::Json, _) => write!(self.w, "\"{v}\""),
            (Format::Table, Align::Left) => write!(self.w, "{:<w$}", v.to_string(), w = c.width),
            (Format::Table, Align::Right) => write!(self.w, "{:>w$}", v.to_string(), w = c.width),
        }
    }

    /// A null cell: `null` in JSON, the column's `none` text in a table.
    pub(crate) fn null(&mut self) -> io::Result<()> {
        let Some(c) = self.next()? else {
            return Ok(());
        };
        match self.format {
            Format::Json => self.w.write_all(b"null"),
            Format::Table => self.none_text(c),
        }
    }

    /// A list of texts from outside kscope: a JSON array of strings (and,
    /// when any item is not UTF-8, `KEY_b64`: the base64 of each such item,
    /// `null` for the others); in a table, joined by spaces, with `...`
    /// right after an item `cut(i)` says was cut short, and ` ...` at the
    /// end when `more` says some were left out.
    pub(crate) fn list<'b>(
        &mut self,
        items: impl Iterator<Item = &'b [u8]> + Clone,
        cut: impl Fn(usize) -> bool,
        more: bool,
    ) -> io::Result<()> {
        let Some(c) = self.next()? else {
            return Ok(());
        };
        let json = self.format == Format::Json;
        if json {
            self.w.write_all(b"[")?;
        }
        let mut any_bad = false;
        for (i, item) in items.clone().enumerate() {
            if i > 0 {
                self.w.write_all(if json { b"," } else { b" " })?;
            }
            if json {
                text::write_json_str(self.w, item)?;
                any_bad |= std::str::from_utf8(item).is_err();
            } else {
                text::write_text(self.w, item)?;
                if cut(i) {
                    self.w.write_all(b"...")?;
                }
            }
        }
        if !json {
            return if more {
                self.w.write_all(b" ...")
            } else {
                Ok(())
            };
        }
        self.w.write_all(b"]")?;
        if any_bad {
            write!(self.w, ",\"{}_b64\":[", c.key)?;
            for (i, item) in items.enumerate() {
                if i > 0 {
                    self.w.write_all(b",")?;
                }
                if std::str::from_utf8(item).is_ok() {
                    self.w.write_all(b"null")?;
                } else {
                    self.w.write_all(b"\"")?;
                    text::write_base64(self.w, item)?;
                    self.w.write_all(b"\"")?;
                }
            }
            self.w.write_all(b"]")?;
        }
        Ok(())
    }

    /// A JSON object nested in this cell: `cols` are its members, which `f`
    /// writes as it writes a row's cells. A table has no room for it and
    /// shows the column's `none` text (nested cells belong in JSON-only
    /// columns).
    pub(crate) fn object(
        &mut self,
        cols: &[Column],
        f: impl FnOnce(&mut Row<'_, W>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(c) = self.next()? else {
            return Ok(());
        };
        match self.format {
            Format::Json => self.nested(cols, f),
            Format::Table => self.none_text(c),
        }
    }

    /// A JSON array of objects, one per item, each with the members `cols`
    /// that `f` writes for its item; a table shows the column's `none`
    /// text, as for [`object`](Self::object).
    pub(crate) fn objects<T>(
        &mut self,
        cols: &[Column],
        items: impl IntoIterator<Item = T>,
        mut f: impl FnMut(&mut Row<'_, W>, T) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(c) = self.next()? else {
            return Ok(());
        };
        if self.format == Format::Table {
            return self.none_text(c);
        }
        self.w.write_all(b"[")?;
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.w.write_all(b",")?;
            }
            self.nested(cols, |r| f(r, item))?;
        }
        self.w.write_all(b"]")
    }

    /// Writes `{...}`: the members `cols`, filled in by `f`.
    fn nested(
        &mut self,
        cols: &[Column],
        f: impl FnOnce(&mut Row<'_, W>) -> io::Result<()>,
    ) -> io::Result<()> {
        self.w.write_all(b"{")?;
        let mut row = Row {
            w: &mut *self.w,
            cols,
            format: Format::Json,
            last: cols.len(),
            i: 0,
            first: true,
        };
        f(&mut row)?;
        debug_assert_eq!(row.i, cols.len(), "an object must write every member");
        self.w.write_all(b"}")
    }

    /// A table cell with the column's `none` text.
    fn none_text(&mut self, c: Column) -> io::Result<()> {
        match c.align {
            Align::Left => write!(self.w, "{:<w$}", c.none, w = c.width),
            Align::Right => write!(self.w, "{:>w$}", c.none, w = c.width),
        }
    }

    /// A list of numbers: a JSON array; in a table, joined by commas.
    pub(crate) fn numbers(&mut self, items: impl Iterator<Item = u64>) -> io::Result<()> {
        let Some(_) = self.next()? else {
            return Ok(());
        };
        let json = self.format == Format::Json;
        if json {
            self.w.write_all(b"[")?;
        }
        for (i, n) in items.enumerate() {
            if i > 0 {
                self.w.write_all(b",")?;
            }
            write!(self.w, "{n}")?;
        }
        if json { self.w.write_all(b"]") } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COLS: [Column; 5] = [
        Column::right("PID", "pid", 7),
        Column::left("COMM", "comm", 8),
        Column::json("ts"),
        Column::right("RET", "ret", 5).none("n/a"),
        Column::left("ARGS", "args", 0),
    ];

    fn render(format: Format) -> String {
        let mut out = Output::new(Vec::new(), format, COLS.to_vec());
        for (pid, comm, ret) in [(1u64, &b"sh"[..], Some(-2i64)), (22, b"a\nb\xff", None)] {
            out.row(|r| {
                r.u64(pid)?;
                r.text(comm)?;
                r.u64(99)?;
                match ret {
                    Some(v) => r.i64(v)?,
                    None => r.null()?,
                }
                r.list([&b"x"[..], b"y z"].into_iter(), |_| false, pid == 1)
            })
            .expect("row");
        }
        String::from_utf8(out.w).expect("utf8")
    }

    #[test]
    fn tables_align_under_the_header() {
        let text = render(Format::Table);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "    PID COMM       RET ARGS");
        assert_eq!(lines[1], "      1 sh          -2 x y z ...");
        // A control character and a bad byte cannot break the row.
        assert_eq!(lines[2], "     22 a?b\u{fffd}       n/a x y z");
        // JSON-only columns stay out of the table.
        assert!(!text.contains("99"), "{text}");
    }

    #[test]
    fn json_lines_have_every_key_and_parse() {
        let text = render(Format::Json);
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON"))
            .collect();
        assert_eq!(rows.len(), 2, "{text}");
        assert_eq!(
            rows[0],
            serde_json::json!({"pid": 1, "comm": "sh", "ts": 99, "ret": -2, "args": ["x", "y z"]})
        );
        assert!(rows[1]["ret"].is_null());
        assert_eq!(
            rows[1]["comm"].as_str().map(|s| s.starts_with("a\nb")),
            Some(true)
        );
    }

    #[test]
    fn json_rows_nest_objects_and_arrays_of_objects() {
        const INNER: [Column; 2] = [Column::json("n"), Column::json("rate")];
        let cols = vec![
            Column::left("NAME", "name", 4),
            Column::json("one"),
            Column::json("all").none("..."),
            Column::right("X", "x", 3).gap(3),
        ];
        let render = |format| {
            let mut out = Output::new(Vec::new(), format, cols.clone());
            out.row(|r| {
                r.str("a")?;
                r.object(&INNER, |r| {
                    r.u64(1)?;
                    r.f64_exact(0.1, 1)
                })?;
                r.objects(&INNER, [2u64, 3], |r, n| {
                    r.u64(n)?;
                    r.f64_exact(n as f64 / 3.0, 1)
                })?;
                r.f64_exact(2.0, 1)
            })
            .expect("row");
            String::from_utf8(out.w).expect("utf8")
        };
        assert_eq!(
            render(Format::Json),
            concat!(
                r#"{"name":"a","one":{"n":1,"rate":0.1},"#,
                r#""all":[{"n":2,"rate":0.6666666666666666},{"n":3,"rate":1.0}],"x":2.0}"#,
                "\n"
            )
        );
        // Nested cells are JSON's; a table shows its own columns, the gap
        // before X three spaces wide.
        assert_eq!(render(Format::Table), "NAME     X\na      2.0\n");
    }

    #[test]
    fn exact_floats_in_json_are_null_when_not_finite() {
        let mut out = Output::new(Vec::new(), Format::Json, vec![Column::json("v")]);
        out.row(|r| r.f64_exact(f64::NAN, 1)).expect("row");
        assert_eq!(out.w, b"{\"v\":null}\n");
    }

    #[test]
    fn a_row_with_too_many_cells_is_an_error() {
        let mut out = Output::new(Vec::new(), Format::Table, vec![Column::left("A", "a", 1)]);
        let e = out.row(|r| {
            r.u64(1)?;
            r.u64(2)
        });
        assert!(e.is_err());
    }

    #[test]
    fn flush_reaches_the_writer_once_per_batch() {
        struct Counting(Vec<u8>, usize);
        impl Write for Counting {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.0.write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.1 += 1;
                Ok(())
            }
        }
        let mut out = Output::new(Counting(Vec::new(), 0), Format::Json, COLS[..1].to_vec());
        out.flush().expect("flush");
        assert_eq!(out.w.1, 0, "nothing written, nothing flushed");
        out.row(|r| r.u64(1)).expect("row");
        out.row(|r| r.u64(2)).expect("row");
        out.flush().expect("flush");
        out.flush().expect("flush");
        assert_eq!(out.w.1, 1);
    }
}
