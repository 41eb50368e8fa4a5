//! CSV input for tabular models (SPEC section 5): an RFC 4180 reader and [`Tabular`], the
//! preprocessing a model was trained with, stored in the model's ONNX `metadata_props`.
//!
//! # Reading
//! [`CsvTable::parse`] follows RFC 4180: fields separated by commas, records by LF or CRLF (a
//! lone CR also ends a record); a field that starts with `"` is quoted, may hold commas, line
//! breaks and doubled quotes (`""` for `"`), and must end with a quote followed by a comma, a line
//! break or the end of the file. A quote inside an unquoted field is kept as is. The first record
//! is the header (required); every other record must have as many fields. A UTF-8 byte order mark
//! is skipped, blank lines are skipped, and values and header names are trimmed of surrounding
//! whitespace. Errors name the file, the line (where the record starts), the data row (1-based,
//! the header not counted) and the column.
//!
//! # Preprocessing
//! [`Tabular::fit`] looks at the training rows once:
//! - a numeric column (declared `NAME:num`, or every present value parses as a finite number)
//!   is standardised, `(v - mean) / std` with the population std of the present values (1 when
//!   that is 0); a missing value takes the training mean, so it becomes 0;
//! - a categorical column (declared `NAME:cat`, or some value is not a number) becomes one-hot
//!   features over the categories seen in training, sorted; a missing or unseen value gives all
//!   zeros;
//! - the optional label column gives class indices: the values themselves when all are
//!   non-negative integers, else the position among the sorted distinct values.
//!
//! Missing values are empty fields and `NA`, `N/A`, `NaN`, `null` (any case). Features are named
//! like `Age` and `Sex=male` ([`Tabular::feature_names`]), in column order. [`Tabular::transform`]
//! applies the same preprocessing to any CSV holding the feature columns (the label column is
//! optional there), and [`load_tabular`] turns it into a [`Dataset`]. The description travels as
//! JSON under [`METADATA_KEY`] in the model file ([`model_tabular`] reads it back).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::{Array2, IxDyn};
use serde::{Deserialize, Serialize};

use super::Dataset;
use crate::{Bounds, Error, Result};

/// The ONNX `metadata_props` key under which a model carries its [`Tabular`] JSON.
pub const METADATA_KEY: &str = "taylormap.tabular";

/// Version written into [`Tabular`] JSON; readers refuse other versions.
const FORMAT_VERSION: u32 = 1;

/// Values read as missing (compared without case), besides the empty field.
const MISSING: [&str; 4] = ["na", "n/a", "nan", "null"];

/// True when `v` (trimmed) stands for a missing value.
pub fn is_missing(v: &str) -> bool {
    v.is_empty() || MISSING.iter().any(|m| v.eq_ignore_ascii_case(m))
}

/// Parses a present value as a finite number.
fn parse_number(v: &str) -> Option<f64> {
    v.parse::<f64>().ok().filter(|x| x.is_finite())
}

// ---------------------------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------------------------

/// A CSV file as text: the header and the data rows, values trimmed.
#[derive(Clone, Debug, PartialEq)]
pub struct CsvTable {
    /// The file the table came from (for error messages).
    pub path: PathBuf,
    /// Column names, from the first record.
    pub header: Vec<String>,
    /// Data rows, each with one value per header column.
    pub rows: Vec<Vec<String>>,
    /// The 1-based line on which each data row starts.
    pub lines: Vec<usize>,
}

impl CsvTable {
    /// Reads and parses a CSV file.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::unreadable(path, e))?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
                return Err(Error::input(
                    path,
                    format!("line {line}: not UTF-8 text; save the CSV as UTF-8"),
                ));
            }
        };
        Self::parse(path, &text)
    }

    /// Parses CSV text; `path` names the source in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let records = split_records(path, text)?;
        let mut records = records.into_iter();
        let Some((header_line, header)) = records.next() else {
            return Err(Error::input(
                path,
                "is empty; expected a header row with the column names, then data rows",
            ));
        };
        let header: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
        let (mut rows, mut lines) = (vec![], vec![]);
        for (line, record) in records {
            if record.len() != header.len() {
                return Err(Error::input(
                    path,
                    format!(
                        "line {line} (row {}) has {} field(s), the header (line {header_line}) has {}; \
                         quote fields that contain commas",
                        rows.len() + 1,
                        record.len(),
                        header.len()
                    ),
                ));
            }
            rows.push(record.into_iter().map(trim_owned).collect());
            lines.push(line);
        }
        Ok(CsvTable {
            path: path.to_path_buf(),
            header,
            rows,
            lines,
        })
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True when the file holds a header but no data rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The index of column `name`, if the header has it exactly once.
    pub fn find(&self, name: &str) -> Result<Option<usize>> {
        let hits: Vec<usize> = (0..self.header.len())
            .filter(|&i| self.header[i] == name)
            .collect();
        match hits[..] {
            [] => Ok(None),
            [i] => Ok(Some(i)),
            _ => Err(Error::input(
                &self.path,
                format!(
                    "the header names column '{name}' {} times (columns {}); rename the duplicates",
                    hits.len(),
                    hits.iter()
                        .map(|i| (i + 1).to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The index of column `name`; an error listing the columns there are when it is absent.
    pub fn column(&self, name: &str) -> Result<usize> {
        self.find(name)?.ok_or_else(|| {
            Error::input(
                &self.path,
                format!(
                    "has no column '{name}' in its header (line 1); columns: {}",
                    self.header.join(", ")
                ),
            )
        })
    }

    /// The rows `idx` (in that order), as a new table.
    pub fn select(&self, idx: &[usize]) -> CsvTable {
        CsvTable {
            path: self.path.clone(),
            header: self.header.clone(),
            rows: idx.iter().map(|&i| self.rows[i].clone()).collect(),
            lines: idx.iter().map(|&i| self.lines[i]).collect(),
        }
    }

    /// Keeps the first `n` rows.
    pub fn truncate(&mut self, n: usize) {
        self.rows.truncate(n);
        self.lines.truncate(n);
    }

    /// "line L (row R), column 'NAME'" for error messages.
    fn at(&self, row: usize, col: usize) -> String {
        format!(
            "line {} (row {}), column '{}'",
            self.lines[row],
            row + 1,
            self.header[col]
        )
    }
}

fn trim_owned(s: String) -> String {
    let t = s.trim();
    if t.len() == s.len() {
        s
    } else {
        t.to_string()
    }
}

/// Splits text into records of raw fields, each with the line it starts on; skips blank lines.
fn split_records(path: &Path, text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut records = vec![];
    let mut record: Vec<String> = vec![];
    let mut field = String::new();
    let mut field_start = true;
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    let end_record =
        |record: &mut Vec<String>, field: &mut String, start: usize, out: &mut Vec<_>| {
            record.push(std::mem::take(field));
            let fields = std::mem::take(record);
            if !(fields.len() == 1 && fields[0].trim().is_empty()) {
                out.push((start, fields));
            }
        };
    while let Some(c) = chars.next() {
        if field_start && c == '"' {
            let open_line = line;
            loop {
                match chars.next() {
                    None => {
                        return Err(Error::input(
                            path,
                            format!(
                                "line {open_line}: a quoted field (field {} of the record) is never \
                                 closed; a quote inside a quoted field is written as two quotes (\"\")",
                                record.len() + 1
                            ),
                        ))
                    }
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => {
                        if c == '\n' {
                            line += 1;
                        }
                        field.push(c);
                    }
                }
            }
            while matches!(chars.peek(), Some(' ' | '\t')) {
                chars.next();
            }
            match chars.peek() {
                None | Some(',') | Some('\n') | Some('\r') => {}
                Some(&c) => {
                    return Err(Error::input(
                        path,
                        format!(
                            "line {line}: character '{c}' after the closing quote of field {} \
                             (quoted from line {open_line}); quote the whole field and write quotes \
                             inside it as two quotes (\"\")",
                            record.len() + 1
                        ),
                    ))
                }
            }
            field_start = false;
            continue;
        }
        match c {
            ',' => {
                record.push(std::mem::take(&mut field));
                field_start = true;
            }
            '\r' | '\n' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                end_record(&mut record, &mut field, record_line, &mut records);
                line += 1;
                record_line = line;
                field_start = true;
            }
            ' ' | '\t' if field_start && field.trim().is_empty() => {
                // Whitespace before an opening quote is not part of the field.
                field.push(c);
            }
            _ => {
                field.push(c);
                field_start = false;
            }
        }
    }
    if !record.is_empty() || !field.is_empty() {
        end_record(&mut record, &mut field, record_line, &mut records);
    }
    Ok(records)
}

// ---------------------------------------------------------------------------------------------
// Preprocessing
// ---------------------------------------------------------------------------------------------

/// A feature column as asked for on the command line: `NAME`, `NAME:num` or `NAME:cat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnSpec {
    /// The header name.
    pub name: String,
    /// The declared kind; `None` infers it from the training values.
    pub kind: Option<DeclaredKind>,
}

/// A column kind declared with a `:num` or `:cat` suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclaredKind {
    /// Standardised numbers (`:num`, `:numeric`).
    Numeric,
    /// One-hot categories (`:cat`, `:categorical`), even when the values look like numbers.
    Categorical,
}

impl FromStr for ColumnSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (name, kind) = match s.rsplit_once(':') {
            Some((n, "num" | "numeric")) => (n, Some(DeclaredKind::Numeric)),
            Some((n, "cat" | "categorical")) => (n, Some(DeclaredKind::Categorical)),
            _ => (s, None),
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::usage(
                "--columns",
                format!("empty column name in '{s}'; expected NAME, NAME:num or NAME:cat"),
            ));
        }
        Ok(ColumnSpec {
            name: name.to_string(),
            kind,
        })
    }
}

/// One feature column of a [`Tabular`] description and how it becomes features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Column {
    /// The header name.
    pub name: String,
    /// The transform.
    #[serde(flatten)]
    pub kind: ColumnKind,
}

/// How a column becomes features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ColumnKind {
    /// One feature, `(v - mean) / std`; missing values give 0 (the mean).
    Numeric { mean: f64, std: f64 },
    /// One feature per category (`1` for the row's category, else `0`).
    Categorical { categories: Vec<String> },
}

/// The label column and how its values become class indices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// The header name.
    pub column: String,
    /// Class names in class-index order, for text labels; `None` when the values are the class
    /// indices themselves (non-negative integers).
    pub classes: Option<Vec<String>>,
}

/// The preprocessing of a tabular model: which columns, in which order, and how each becomes
/// features (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tabular {
    /// Format version (`FORMAT_VERSION`).
    pub version: u32,
    /// Feature columns in feature order.
    pub columns: Vec<Column>,
    /// The label column, when the model was trained with one.
    pub label: Option<Label>,
}

impl Tabular {
    /// Fits the preprocessing on training rows: `columns` (every column but the label when
    /// empty), and the optional `label` column.
    pub fn fit(table: &CsvTable, columns: &[ColumnSpec], label: Option<&str>) -> Result<Tabular> {
        if table.is_empty() {
            return Err(Error::input(&table.path, "holds a header but no data rows"));
        }
        let specs: Vec<ColumnSpec> = if columns.is_empty() {
            table
                .header
                .iter()
                .filter(|h| Some(h.as_str()) != label)
                .map(|h| ColumnSpec {
                    name: h.clone(),
                    kind: None,
                })
                .collect()
        } else {
            columns.to_vec()
        };
        let mut seen = HashSet::new();
        for s in &specs {
            if !seen.insert(s.name.as_str()) {
                return Err(Error::usage(
                    "--columns",
                    format!("column '{}' is listed twice", s.name),
                ));
            }
            if Some(s.name.as_str()) == label {
                return Err(Error::usage(
                    "--columns",
                    format!(
                        "'{}' is the label column (--label); it cannot also be a feature",
                        s.name
                    ),
                ));
            }
        }
        let mut out = Vec::with_capacity(specs.len());
        for spec in &specs {
            let col = table.column(&spec.name)?;
            out.push(Column {
                name: spec.name.clone(),
                kind: fit_column(table, col, spec.kind)?,
            });
        }
        let label = match label {
            Some(name) => Some(fit_label(table, table.column(name)?)?),
            None => None,
        };
        let tab = Tabular {
            version: FORMAT_VERSION,
            columns: out,
            label,
        };
        if tab.num_features() == 0 {
            return Err(Error::input(
                &table.path,
                "the chosen columns give no features (every categorical value is missing); \
                 choose other columns with --columns",
            ));
        }
        Ok(tab)
    }

    /// "12 features from 7 columns" (singular where there is one).
    pub fn counts(&self) -> String {
        let (f, c) = (self.num_features(), self.columns.len());
        let s = |n: usize| if n == 1 { "" } else { "s" };
        format!("{f} feature{} from {c} column{}", s(f), s(c))
    }

    /// What `taylormap inspect` says of the preprocessing: the CSV columns `explain` needs, how
    /// each becomes features, and the label.
    pub fn describe(&self) -> String {
        let mut s = format!("tabular preprocessing (CSV input): {}\n", self.counts());
        for c in &self.columns {
            let how = match &c.kind {
                ColumnKind::Numeric { mean, std } => {
                    format!("numeric, (v - {mean:.6}) / {std:.6}, missing -> mean")
                }
                ColumnKind::Categorical { categories } => {
                    format!("categorical, one-hot: {}", categories.join(", "))
                }
            };
            s.push_str(&format!("  {:<16} {how}\n", c.name));
        }
        match &self.label {
            Some(l) => {
                let classes = match &l.classes {
                    Some(c) => c.join(", "),
                    None => "class indices".into(),
                };
                s.push_str(&format!("label column: {} ({classes})\n", l.column));
            }
            None => s.push_str("label column: none\n"),
        }
        s
    }

    /// Number of features (the model's input width).
    pub fn num_features(&self) -> usize {
        self.columns
            .iter()
            .map(|c| match &c.kind {
                ColumnKind::Numeric { .. } => 1,
                ColumnKind::Categorical { categories } => categories.len(),
            })
            .sum()
    }

    /// Feature names in feature order: `NAME` for numeric columns, `NAME=VALUE` per category.
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.num_features());
        for c in &self.columns {
            match &c.kind {
                ColumnKind::Numeric { .. } => names.push(c.name.clone()),
                ColumnKind::Categorical { categories } => {
                    names.extend(categories.iter().map(|v| format!("{}={v}", c.name)))
                }
            }
        }
        names
    }

    /// The number of classes when the labels are text (their count), else `None` (the trainer
    /// takes the largest label plus one).
    pub fn num_classes(&self) -> Option<usize> {
        self.label
            .as_ref()
            .and_then(|l| l.classes.as_ref())
            .map(Vec::len)
    }

    /// Applies the preprocessing: features `(N, D)` in [`Self::feature_names`] order, and the
    /// class labels when the table has the label column.
    pub fn transform(&self, table: &CsvTable) -> Result<(Array2<f32>, Option<Vec<usize>>)> {
        let cols: Vec<usize> = self
            .columns
            .iter()
            .map(|c| {
                table.find(&c.name)?.ok_or_else(|| {
                    Error::input(
                        &table.path,
                        format!(
                            "has no column '{}', which the model was trained with; the model \
                             needs columns {}; this file has {}",
                            c.name,
                            self.columns
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                            table.header.join(", ")
                        ),
                    )
                })
            })
            .collect::<Result<_>>()?;
        let lookups: Vec<Option<HashMap<&str, usize>>> = self
            .columns
            .iter()
            .map(|c| match &c.kind {
                ColumnKind::Categorical { categories } => Some(
                    categories
                        .iter()
                        .enumerate()
                        .map(|(k, v)| (v.as_str(), k))
                        .collect(),
                ),
                ColumnKind::Numeric { .. } => None,
            })
            .collect();
        let d = self.num_features();
        let mut x = Array2::<f32>::zeros((table.len(), d));
        for (r, row) in table.rows.iter().enumerate() {
            let mut f = 0;
            for ((column, &col), lookup) in self.columns.iter().zip(&cols).zip(&lookups) {
                let v = row[col].as_str();
                match &column.kind {
                    ColumnKind::Numeric { mean, std } => {
                        if !is_missing(v) {
                            let n = parse_number(v).ok_or_else(|| {
                                Error::input(
                                    &table.path,
                                    format!(
                                        "{}: '{v}' is not a finite number; the column is numeric \
                                         (missing values are empty or NA)",
                                        table.at(r, col)
                                    ),
                                )
                            })?;
                            let z = ((n - mean) / std) as f32;
                            if !z.is_finite() {
                                return Err(Error::NonFinite {
                                    what: format!(
                                        "input {}, sample {r} ({}): {v} standardised overflows float32",
                                        table.path.display(),
                                        table.at(r, col)
                                    ),
                                });
                            }
                            x[[r, f]] = z;
                        }
                        f += 1;
                    }
                    ColumnKind::Categorical { categories } => {
                        let lookup = lookup.as_ref().expect("categorical lookup");
                        if let Some(&k) = lookup.get(v) {
                            x[[r, f + k]] = 1.0;
                        }
                        f += categories.len();
                    }
                }
            }
        }
        let labels = match &self.label {
            Some(label) => match table.find(&label.column)? {
                Some(col) => Some(
                    (0..table.len())
                        .map(|r| label_index(table, r, col, label.classes.as_deref()))
                        .collect::<Result<Vec<_>>>()?,
                ),
                None => None,
            },
            None => None,
        };
        Ok((x, labels))
    }

    /// The description as JSON (what [`METADATA_KEY`] holds).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("tabular description serialises")
    }

    /// Parses and checks a JSON description; the error message says what is wrong.
    pub fn from_json(text: &str) -> std::result::Result<Tabular, String> {
        let tab: Tabular = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if tab.version != FORMAT_VERSION {
            return Err(format!(
                "tabular description version {} (this taylormap reads version {FORMAT_VERSION})",
                tab.version
            ));
        }
        for c in &tab.columns {
            if let ColumnKind::Numeric { mean, std } = c.kind {
                if !(mean.is_finite() && std.is_finite() && std > 0.0) {
                    return Err(format!(
                        "column '{}': mean {mean} and std {std} must be finite, std > 0",
                        c.name
                    ));
                }
            }
        }
        if tab.num_features() == 0 {
            return Err("the description has no features".into());
        }
        Ok(tab)
    }
}

/// Numeric or categorical transform of column `col` fitted on all rows.
fn fit_column(table: &CsvTable, col: usize, declared: Option<DeclaredKind>) -> Result<ColumnKind> {
    let present: Vec<(usize, &str)> = table
        .rows
        .iter()
        .enumerate()
        .map(|(r, row)| (r, row[col].as_str()))
        .filter(|(_, v)| !is_missing(v))
        .collect();
    let numbers: Option<Vec<f64>> = match declared {
        Some(DeclaredKind::Categorical) => None,
        Some(DeclaredKind::Numeric) => Some(
            present
                .iter()
                .map(|&(r, v)| {
                    parse_number(v).ok_or_else(|| {
                        Error::input(
                            &table.path,
                            format!(
                                "{}: '{v}' is not a finite number, but the column is declared \
                                 numeric (:num); missing values are empty or NA",
                                table.at(r, col)
                            ),
                        )
                    })
                })
                .collect::<Result<_>>()?,
        ),
        None => present.iter().map(|&(_, v)| parse_number(v)).collect(),
    };
    Ok(match numbers {
        Some(v) => {
            let (mean, std) = if v.is_empty() {
                (0.0, 1.0)
            } else {
                let n = v.len() as f64;
                let mean = v.iter().sum::<f64>() / n;
                let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
                let std = var.sqrt();
                (
                    mean,
                    if std.is_finite() && std > 0.0 {
                        std
                    } else {
                        1.0
                    },
                )
            };
            if !mean.is_finite() {
                return Err(Error::input(
                    &table.path,
                    format!(
                        "column '{}': the mean of its values overflows",
                        table.header[col]
                    ),
                ));
            }
            ColumnKind::Numeric { mean, std }
        }
        None => {
            let mut categories: Vec<String> = present.iter().map(|(_, v)| v.to_string()).collect();
            categories.sort();
            categories.dedup();
            ColumnKind::Categorical { categories }
        }
    })
}

/// The label transform fitted on all rows; every row needs a label.
fn fit_label(table: &CsvTable, col: usize) -> Result<Label> {
    let mut values = Vec::with_capacity(table.len());
    for (r, row) in table.rows.iter().enumerate() {
        let v = row[col].as_str();
        if is_missing(v) {
            return Err(Error::input(
                &table.path,
                format!(
                    "{}: the label is missing; every training row needs one",
                    table.at(r, col)
                ),
            ));
        }
        values.push(v);
    }
    let classes = if values.iter().all(|v| v.parse::<usize>().is_ok()) {
        None
    } else {
        let mut c: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        c.sort();
        c.dedup();
        Some(c)
    };
    Ok(Label {
        column: table.header[col].clone(),
        classes,
    })
}

fn label_index(
    table: &CsvTable,
    r: usize,
    col: usize,
    classes: Option<&[String]>,
) -> Result<usize> {
    let v = table.rows[r][col].as_str();
    if is_missing(v) {
        return Err(Error::input(
            &table.path,
            format!(
                "{}: the label is missing; give every row a label or drop the column",
                table.at(r, col)
            ),
        ));
    }
    match classes {
        None => v.parse::<usize>().map_err(|_| {
            Error::input(
                &table.path,
                format!(
                    "{}: label '{v}' is not a class index (a non-negative integer), as the \
                     model's labels were",
                    table.at(r, col)
                ),
            )
        }),
        Some(classes) => classes.iter().position(|c| c == v).ok_or_else(|| {
            Error::input(
                &table.path,
                format!(
                    "{}: label '{v}' is not one of the classes the model was trained with: {}",
                    table.at(r, col),
                    classes.join(", ")
                ),
            )
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Loads a CSV file with a model's preprocessing: samples `(N, D)`, labels from the label column
/// when the file has it, and bounds = the smallest and largest transformed value.
pub fn load_tabular(path: &Path, tabular: &Tabular) -> Result<Dataset> {
    let table = CsvTable::read(path)?;
    if table.is_empty() {
        return Err(Error::input(path, "holds a header but no data rows"));
    }
    let (x, labels) = tabular.transform(&table)?;
    let (low, high) = x
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v as f64), h.max(v as f64))
        });
    let shape = x.shape().to_vec();
    let x = x
        .into_shape_with_order(IxDyn(&shape))
        .map_err(|e| Error::input(path, format!("shape {shape:?}: {e}")))?;
    Ok(Dataset {
        x,
        labels,
        path: path.to_path_buf(),
        bounds: Bounds { low, high },
        kind: "csv",
        pixels: None,
    })
}

/// The preprocessing an ONNX model was trained with ([`METADATA_KEY`] in its `metadata_props`),
/// or `None` when it carries none.
pub fn model_tabular(path: &Path) -> Result<Option<Tabular>> {
    tabular_of(
        &crate::model::onnx::load_metadata(path)?,
        &path.display().to_string(),
    )
}

/// [`model_tabular`] of a model already read: its bytes, and its path for messages.
pub fn model_tabular_from_bytes(bytes: &[u8], path_label: &str) -> Result<Option<Tabular>> {
    tabular_of(
        &crate::model::onnx::metadata_from_bytes(bytes, path_label)?,
        path_label,
    )
}

/// The preprocessing in a model's metadata, if it carries one.
fn tabular_of(meta: &[(String, String)], path_label: &str) -> Result<Option<Tabular>> {
    let Some((_, json)) = meta.iter().find(|(k, _)| k == METADATA_KEY) else {
        return Ok(None);
    };
    Tabular::from_json(json)
        .map(Some)
        .map_err(|e| Error::Model {
            path: path_label.to_string(),
            node: format!("metadata_props['{METADATA_KEY}']"),
            message: format!("not a valid tabular preprocessing description: {e}"),
        })
}
