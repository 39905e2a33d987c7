//! The MovieLens-100K click stream, rebuilt in Rust for the Adapters-II replay tests.
//!
//! The replay tests feed graft the same rows, in the same order, with the same features
//! as the torch reference that produced `fixtures/movielens/` (scripts/movielens/train.py).
//! The data itself cannot be committed (license), so this module rebuilds the stream from
//! the RecBole copy of ML-100K and must agree with `scripts/movielens/stream.py` bit for
//! bit; `fixtures/movielens/features_digest.json` holds aggregates of both parts that
//! [`Stream::digest`] reproduces, and `features.json` the definition that the constants
//! below are checked against (tests/tests/movielens_stream.rs).
//!
//! The definition, in short (README.md in scripts/movielens has the long form):
//! - rows = all interactions sorted by (timestamp, user_id, item_id) as integers
//!   (a stable sort); click = rating ≥ 4; the first ⌊0.8·n⌋ rows are the train part,
//!   the rest the replay part;
//! - one dense column, `f32((year − 1985) / 15)` with the division in f64, 0 when the
//!   release year is missing (not all ASCII digits);
//! - seven embedding-bag fields ([`FIELDS`]), ids padded with the pad id = vocab size;
//! - the user group is the age bucket.
//!
//! Only std is used: this is test support, compiled into graft-tests' library.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Environment variable naming the folder that holds `ml-100k.inter`, `.user`, `.item`.
pub const DATA_ENV: &str = "GRAFT_ML100K_DIR";
/// Interactions: `user_id:token  item_id:token  rating:float  timestamp:float`.
pub const INTER_FILE: &str = "ml-100k.inter";
/// Users: `user_id:token  age:token  gender:token  occupation:token  zip_code:token`.
pub const USER_FILE: &str = "ml-100k.user";
/// Items: `item_id:token  movie_title:token_seq  release_year:token  class:token_seq`.
pub const ITEM_FILE: &str = "ml-100k.item";

const INTER_HEADER: &str = "user_id:token\titem_id:token\trating:float\ttimestamp:float";
const USER_HEADER: &str = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token";
const ITEM_HEADER: &str = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq";

/// Embedding width of every field.
pub const EMB_DIM: usize = 8;
/// Users are ids 1..=943; the user field holds `user_id − 1`.
pub const N_USERS: usize = 943;
/// Items are ids 1..=1682; the item field holds `item_id − 1`.
pub const N_ITEMS: usize = 1682;
/// Age bucket = how many of these edges are ≤ age (7 buckets: <18, 18-24, 25-34, 35-44,
/// 45-49, 50-55, 56+).
pub const AGE_EDGES: [i64; 6] = [18, 25, 35, 45, 50, 56];
/// Gender tokens; id = index.
pub const GENDERS: [&str; 2] = ["F", "M"];
/// The 21 occupation names in sorted order; id = index.
pub const OCCUPATIONS: [&str; 21] = [
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
];
/// The 19 genre tokens of the `class` column in sorted (byte) order; id = index.
pub const GENRES: [&str; 19] = [
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
    "unknown",
];
/// Genre bag slots (the most genres any item has).
pub const GENRE_SLOTS: usize = 6;
/// Release decade ids: 0 missing, 1 before 1940, 2 the 1940s, …, 7 the 1990s and later.
pub const DECADES: usize = 8;
/// User groups (per-group adapters): the age bucket.
pub const GROUPS: usize = 7;
/// Group names as used in the fixture folders (`lora_age0` …).
pub const GROUP_NAMES: [&str; GROUPS] = ["age0", "age1", "age2", "age3", "age4", "age5", "age6"];
/// The dense graph input and its width.
pub const DENSE_INPUT: &str = "dense";
/// Columns of the dense input.
pub const DENSE_WIDTH: usize = 1;
/// Width of the concat node (dense + one embedding per field).
pub const CONCAT_WIDTH: usize = DENSE_WIDTH + EMB_DIM * FIELDS.len();
/// Train part = ⌊n · 8 / 10⌋ rows.
const TRAIN_NUM: usize = 8;
const TRAIN_DEN: usize = 10;

/// One embedding-bag field: its graph input is i64 `[rows, slots]`, unused slots hold
/// [`Field::pad_id`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Field name (`features.json` → fields[].name).
    pub name: &'static str,
    /// Graph input name.
    pub input: &'static str,
    /// Number of real ids; the table has one more (all-zero) row for the pad id.
    pub vocab: usize,
    /// Slots per row.
    pub slots: usize,
}

impl Field {
    /// The id that fills unused slots: the vocab size.
    pub const fn pad_id(&self) -> i64 {
        self.vocab as i64
    }
}

/// The fields in graph-input (and concat) order.
pub const FIELDS: [Field; 7] = [
    Field { name: "user", input: "ids_user", vocab: N_USERS, slots: 1 },
    Field { name: "item", input: "ids_item", vocab: N_ITEMS, slots: 1 },
    Field { name: "age", input: "ids_age", vocab: AGE_EDGES.len() + 1, slots: 1 },
    Field { name: "gender", input: "ids_gender", vocab: GENDERS.len(), slots: 1 },
    Field { name: "occupation", input: "ids_occupation", vocab: OCCUPATIONS.len(), slots: 1 },
    Field { name: "genre", input: "ids_genre", vocab: GENRES.len(), slots: GENRE_SLOTS },
    Field { name: "decade", input: "ids_decade", vocab: DECADES, slots: 1 },
];

const USER: usize = 0;
const ITEM: usize = 1;
const AGE: usize = 2;
const GENDER: usize = 3;
const OCCUPATION: usize = 4;
const GENRE: usize = 5;
const DECADE: usize = 6;

/// Where the data is: `$GRAFT_ML100K_DIR` when set, else the RecBole wheel installed in
/// `<workspace>/.venv` (`lib/python3*/site-packages/recbole/dataset_example/ml-100k`).
/// `None` when neither holds `ml-100k.inter`.
pub fn locate() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(DATA_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return dir.join(INTER_FILE).is_file().then_some(dir);
    }
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.join(".venv").join("lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .rev()
        .map(|p| p.join("site-packages/recbole/dataset_example/ml-100k"))
        .find(|d| d.join(INTER_FILE).is_file())
}

/// The whole stream in row order (train part, then replay part).
#[derive(Clone, Debug, PartialEq)]
pub struct Stream {
    /// Unix seconds.
    pub timestamps: Vec<i64>,
    /// Raw user ids (1-based).
    pub user_ids: Vec<u32>,
    /// Raw item ids (1-based).
    pub item_ids: Vec<u32>,
    /// 1.0 for a click (rating ≥ 4), else 0.0.
    pub labels: Vec<f32>,
    /// User group (age bucket) per row, `0..GROUPS`.
    pub groups: Vec<usize>,
    /// `[rows, DENSE_WIDTH]`, row-major.
    pub dense: Vec<f32>,
    /// One `[rows, slots]` id matrix per field, in [`FIELDS`] order.
    pub ids: Vec<Vec<i64>>,
}

/// Model inputs and targets for a range of rows, as owned buffers named like the graph
/// inputs: bind `dense` as f32 `[rows, DENSE_WIDTH]` and each [`IdColumn`] as i64
/// `[rows, slots]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Number of rows.
    pub rows: usize,
    /// `[rows, DENSE_WIDTH]`, for the input [`DENSE_INPUT`].
    pub dense: Vec<f32>,
    /// One per field, in [`FIELDS`] order.
    pub ids: Vec<IdColumn>,
    /// Click labels.
    pub labels: Vec<f32>,
    /// User groups.
    pub groups: Vec<usize>,
}

/// The padded ids of one field for a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdColumn {
    /// Graph input name.
    pub input: &'static str,
    /// Slots per row.
    pub slots: usize,
    /// `[rows, slots]`, row-major.
    pub data: Vec<i64>,
}

impl Batch {
    /// The id column bound to graph input `input`.
    pub fn ids_for(&self, input: &str) -> Option<&IdColumn> {
        self.ids.iter().find(|c| c.input == input)
    }
}

/// Aggregates of a range of rows (`features_digest.json` → "replay" / "train"). With k
/// the 0-based row inside the range and w = k + 1, the checksums weight row k by w (and
/// slot s by s + 1), so a swapped row or a misplaced id changes them.
#[derive(Clone, Debug, PartialEq)]
pub struct Digest {
    /// Rows in the range.
    pub rows: usize,
    /// Σ label.
    pub clicks: i64,
    /// Σ w·label.
    pub label_checksum: i64,
    /// Timestamp of the first row (`None` for an empty range).
    pub first_timestamp: Option<i64>,
    /// Timestamp of the last row.
    pub last_timestamp: Option<i64>,
    /// Σ w·(timestamp − first timestamp).
    pub timestamp_checksum: i64,
    /// Σ group.
    pub group_sum: i64,
    /// Σ w·group.
    pub group_checksum: i64,
    /// Σ dense values, f64 accumulation in row order.
    pub dense_sum: f64,
    /// Σ w·dense value.
    pub dense_checksum: f64,
    /// Per field ([`FIELDS`] order): Σ of every slot's id, pad ids included.
    pub id_sums: [i64; FIELDS.len()],
    /// Per field: Σ_k w · Σ_s (s + 1)·id[k, s].
    pub id_checksums: [i64; FIELDS.len()],
}

impl Stream {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Rows of the train part: `0..⌊0.8·n⌋`.
    pub fn train_range(&self) -> Range<usize> {
        0..self.len() * TRAIN_NUM / TRAIN_DEN
    }

    /// Rows of the replay part: the rest, in stream order.
    pub fn replay_range(&self) -> Range<usize> {
        self.len() * TRAIN_NUM / TRAIN_DEN..self.len()
    }

    /// Copies `rows` into graph-ready buffers; `None` if the range is reversed or runs past
    /// the stream.
    pub fn batch(&self, rows: Range<usize>) -> Option<Batch> {
        if rows.start > rows.end || rows.end > self.len() {
            return None;
        }
        let ids = FIELDS
            .iter()
            .zip(&self.ids)
            .map(|(f, data)| IdColumn {
                input: f.input,
                slots: f.slots,
                data: data[rows.start * f.slots..rows.end * f.slots].to_vec(),
            })
            .collect();
        Some(Batch {
            rows: rows.len(),
            dense: self.dense[rows.start * DENSE_WIDTH..rows.end * DENSE_WIDTH].to_vec(),
            ids,
            labels: self.labels[rows.clone()].to_vec(),
            groups: self.groups[rows].to_vec(),
        })
    }

    /// The digest of the replay part (`features_digest.json` → "replay").
    pub fn digest(&self) -> Digest {
        self.digest_of(self.replay_range()).unwrap_or_else(empty_digest)
    }

    /// The digest of any range of rows; `None` if it is out of bounds.
    pub fn digest_of(&self, rows: Range<usize>) -> Option<Digest> {
        if rows.start > rows.end || rows.end > self.len() {
            return None;
        }
        let mut d = empty_digest();
        d.rows = rows.len();
        d.first_timestamp = self.timestamps.get(rows.start).copied().filter(|_| !rows.is_empty());
        d.last_timestamp =
            rows.end.checked_sub(1).and_then(|i| self.timestamps.get(i)).copied().filter(|_| !rows.is_empty());
        let t0 = d.first_timestamp.unwrap_or(0);
        for (k, row) in rows.enumerate() {
            let w = k as i64 + 1;
            let label = i64::from(self.labels[row] > 0.5);
            d.clicks += label;
            d.label_checksum += w * label;
            d.timestamp_checksum += w * (self.timestamps[row] - t0);
            let group = self.groups[row] as i64;
            d.group_sum += group;
            d.group_checksum += w * group;
            for &v in &self.dense[row * DENSE_WIDTH..(row + 1) * DENSE_WIDTH] {
                d.dense_sum += f64::from(v);
                d.dense_checksum += w as f64 * f64::from(v);
            }
            for (f, field) in FIELDS.iter().enumerate() {
                let slots = &self.ids[f][row * field.slots..(row + 1) * field.slots];
                d.id_sums[f] += slots.iter().sum::<i64>();
                d.id_checksums[f] += w * slots.iter().zip(1i64..).map(|(&id, s)| s * id).sum::<i64>();
            }
        }
        Some(d)
    }
}

fn empty_digest() -> Digest {
    Digest {
        rows: 0,
        clicks: 0,
        label_checksum: 0,
        first_timestamp: None,
        last_timestamp: None,
        timestamp_checksum: 0,
        group_sum: 0,
        group_checksum: 0,
        dense_sum: 0.0,
        dense_checksum: 0.0,
        id_sums: [0; FIELDS.len()],
        id_checksums: [0; FIELDS.len()],
    }
}

fn bad(file: &str, line: usize, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{file}:{line}: {what}"))
}

/// The rows of a RecBole atomic file: UTF-8, `\n`-separated, the first line the exact
/// header, fields split on tabs, empty lines skipped. Yields (1-based line, columns).
fn read_table(dir: &Path, file: &'static str, header: &str) -> io::Result<Vec<(usize, Vec<String>)>> {
    let path = dir.join(file);
    let bytes = std::fs::read(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let text = String::from_utf8(bytes).map_err(|_| bad(file, 0, "not UTF-8"))?;
    let mut lines = text.split('\n');
    if lines.next() != Some(header) {
        return Err(bad(file, 1, format!("header is not `{}`", header.escape_default())));
    }
    let width = header.split('\t').count();
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate().filter(|(_, l)| !l.is_empty()) {
        let cols: Vec<String> = line.split('\t').map(str::to_owned).collect();
        if cols.len() != width {
            return Err(bad(file, i + 2, format!("{} columns, expected {width}", cols.len())));
        }
        rows.push((i + 2, cols));
    }
    Ok(rows)
}

fn parse<T: std::str::FromStr>(file: &str, line: usize, column: &str, text: &str) -> io::Result<T> {
    text.parse().map_err(|_| bad(file, line, format!("{column} `{text}` is not a number")))
}

fn index_of(list: &[&str], token: &str) -> Option<usize> {
    list.iter().position(|t| *t == token)
}

/// Age bucket: how many [`AGE_EDGES`] are ≤ `age`.
pub fn age_bucket(age: i64) -> usize {
    AGE_EDGES.iter().filter(|&&e| age >= e).count()
}

/// A release_year token made only of ASCII digits is a year; anything else is missing.
pub fn parse_year(token: &str) -> Option<i64> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

/// Decade id of a release year (see [`DECADES`]).
pub fn decade_id(year: Option<i64>) -> i64 {
    match year {
        None => 0,
        Some(y) if y < 1940 => 1,
        Some(y) => (2 + (y - 1940) / 10).min(7),
    }
}

/// The dense value of a release year: `f32((year − 1985) / 15)` in f64, 0 when missing.
pub fn year_norm(year: Option<i64>) -> f32 {
    year.map_or(0.0, |y| ((y as f64 - 1985.0) / 15.0) as f32)
}

struct UserFeatures {
    age: usize,
    gender: usize,
    occupation: usize,
}

struct ItemFeatures {
    genres: [i64; GENRE_SLOTS],
    decade: i64,
    dense: f32,
}

fn load_users(dir: &Path) -> io::Result<HashMap<u32, UserFeatures>> {
    let mut users = HashMap::new();
    for (line, c) in read_table(dir, USER_FILE, USER_HEADER)? {
        let id: u32 = parse(USER_FILE, line, "user_id", &c[0])?;
        let age: i64 = parse(USER_FILE, line, "age", &c[1])?;
        let gender = index_of(&GENDERS, &c[2]).ok_or_else(|| bad(USER_FILE, line, format!("gender `{}`", c[2])))?;
        let occupation =
            index_of(&OCCUPATIONS, &c[3]).ok_or_else(|| bad(USER_FILE, line, format!("occupation `{}`", c[3])))?;
        if users.insert(id, UserFeatures { age: age_bucket(age), gender, occupation }).is_some() {
            return Err(bad(USER_FILE, line, format!("user {id} listed twice")));
        }
    }
    Ok(users)
}

fn load_items(dir: &Path) -> io::Result<HashMap<u32, ItemFeatures>> {
    let mut items = HashMap::new();
    for (line, c) in read_table(dir, ITEM_FILE, ITEM_HEADER)? {
        let id: u32 = parse(ITEM_FILE, line, "item_id", &c[0])?;
        let mut genres = [GENRES.len() as i64; GENRE_SLOTS];
        for (slot, token) in c[3].split(' ').filter(|t| !t.is_empty()).enumerate() {
            let genre = index_of(&GENRES, token).ok_or_else(|| bad(ITEM_FILE, line, format!("genre `{token}`")))?;
            *genres.get_mut(slot).ok_or_else(|| bad(ITEM_FILE, line, format!("more than {GENRE_SLOTS} genres")))? =
                genre as i64;
        }
        let year = parse_year(&c[2]);
        let item = ItemFeatures { genres, decade: decade_id(year), dense: year_norm(year) };
        if items.insert(id, item).is_some() {
            return Err(bad(ITEM_FILE, line, format!("item {id} listed twice")));
        }
    }
    Ok(items)
}

/// Reads the three files in `dir` and builds the stream. Malformed files (wrong header,
/// column count, unknown token, id out of range, a user or item missing from its table)
/// are `InvalidData` errors naming the file and line.
pub fn load(dir: &Path) -> io::Result<Stream> {
    let users = load_users(dir)?;
    let items = load_items(dir)?;
    // (timestamp, user, item, line, click)
    let mut rows: Vec<(i64, u32, u32, usize, bool)> = Vec::new();
    for (line, c) in read_table(dir, INTER_FILE, INTER_HEADER)? {
        let user: u32 = parse(INTER_FILE, line, "user_id", &c[0])?;
        let item: u32 = parse(INTER_FILE, line, "item_id", &c[1])?;
        let rating: f64 = parse(INTER_FILE, line, "rating", &c[2])?;
        let timestamp: i64 = parse(INTER_FILE, line, "timestamp", &c[3])?;
        if !(1..=N_USERS as u32).contains(&user) || !(1..=N_ITEMS as u32).contains(&item) {
            return Err(bad(INTER_FILE, line, format!("user {user} / item {item} out of range")));
        }
        if !users.contains_key(&user) || !items.contains_key(&item) {
            return Err(bad(INTER_FILE, line, format!("user {user} or item {item} has no features")));
        }
        rows.push((timestamp, user, item, line, rating >= 4.0));
    }
    // Stable, so rows equal in (timestamp, user, item) keep their file order, as numpy's lexsort does.
    rows.sort_by_key(|&(t, u, i, _, _)| (t, u, i));

    let n = rows.len();
    let mut s = Stream {
        timestamps: Vec::with_capacity(n),
        user_ids: Vec::with_capacity(n),
        item_ids: Vec::with_capacity(n),
        labels: Vec::with_capacity(n),
        groups: Vec::with_capacity(n),
        dense: Vec::with_capacity(n * DENSE_WIDTH),
        ids: FIELDS.iter().map(|f| Vec::with_capacity(n * f.slots)).collect(),
    };
    for (timestamp, user, item, _, click) in rows {
        // Both lookups were checked above.
        let (Some(u), Some(it)) = (users.get(&user), items.get(&item)) else {
            return Err(bad(INTER_FILE, 0, "internal: feature lookup"));
        };
        s.timestamps.push(timestamp);
        s.user_ids.push(user);
        s.item_ids.push(item);
        s.labels.push(if click { 1.0 } else { 0.0 });
        s.groups.push(u.age);
        s.dense.push(it.dense);
        s.ids[USER].push(i64::from(user) - 1);
        s.ids[ITEM].push(i64::from(item) - 1);
        s.ids[AGE].push(u.age as i64);
        s.ids[GENDER].push(u.gender as i64);
        s.ids[OCCUPATION].push(u.occupation as i64);
        s.ids[GENRE].extend_from_slice(&it.genres);
        s.ids[DECADE].push(it.decade);
    }
    Ok(s)
}

/// Mean binary cross-entropy, `−(y ln p + (1−y) ln(1−p))` with p clamped to
/// [1e-7, 1 − 1e-7], accumulated in f64 (as reference_metrics.json). `None` for empty or
/// mismatched inputs.
pub fn logloss(probs: &[f32], labels: &[f32]) -> Option<f64> {
    if probs.len() != labels.len() || probs.is_empty() {
        return None;
    }
    const EPS: f64 = 1e-7;
    let sum: f64 = probs
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = f64::from(p).clamp(EPS, 1.0 - EPS);
            let y = f64::from(y);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum();
    Some(sum / probs.len() as f64)
}

/// ROC AUC from the Mann–Whitney U statistic; tied scores share their average rank (as
/// sklearn's `roc_auc_score`). A label > 0.5 is positive. `None` for mismatched inputs,
/// a NaN score, or a single class.
pub fn auc(probs: &[f32], labels: &[f32]) -> Option<f64> {
    if probs.len() != labels.len() || probs.iter().any(|p| p.is_nan()) {
        return None;
    }
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[a].total_cmp(&probs[b]));
    let (mut positive_rank_sum, mut positives) = (0.0f64, 0usize);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && probs[order[j + 1]] == probs[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &row in &order[i..=j] {
            if labels[row] > 0.5 {
                positive_rank_sum += rank;
                positives += 1;
            }
        }
        i = j + 1;
    }
    let negatives = probs.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((positive_rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_years() {
        let ages = [7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73];
        assert_eq!(ages.map(age_bucket), [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
        assert_eq!(parse_year("1995"), Some(1995));
        assert_eq!([parse_year("unkonwn"), parse_year("V"), parse_year(""), parse_year("+199")], [None; 4]);
        let decades = [None, Some(1939), Some(1940), Some(1949), Some(1950), Some(1990), Some(1998), Some(2005)];
        assert_eq!(decades.map(decade_id), [0, 1, 2, 2, 3, 7, 7, 7]);
        assert_eq!(year_norm(Some(2000)), 1.0);
        assert_eq!(year_norm(None), 0.0);
        assert_eq!(year_norm(Some(1922)), (-63.0f64 / 15.0) as f32);
        assert_eq!(CONCAT_WIDTH, 57);
    }

    #[test]
    fn auc_matches_sklearn_examples() {
        // sklearn's roc_auc_score docs example: 0.75.
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), Some(0.75));
        // All tied: 0.5. One tie across classes: (1 + 0.5 + 1 + 1) / 4.
        assert_eq!(auc(&[0.5; 4], &[0.0, 1.0, 0.0, 1.0]), Some(0.5));
        assert_eq!(auc(&[0.1, 0.3, 0.3, 0.9], &[0.0, 0.0, 1.0, 1.0]), Some(0.875));
        assert_eq!(auc(&[0.2, 0.1], &[1.0, 1.0]), None);
        assert_eq!(auc(&[0.2, f32::NAN], &[1.0, 0.0]), None);
        assert_eq!(auc(&[0.2], &[1.0, 0.0]), None);
    }

    #[test]
    fn logloss_values() {
        let l = logloss(&[0.9, 0.2], &[1.0, 0.0]).unwrap_or(f64::NAN);
        let want = -((0.9f32 as f64).ln() + (1.0 - 0.2f32 as f64).ln()) / 2.0;
        assert!((l - want).abs() < 1e-15, "{l} vs {want}");
        // Clamped: a confident miss costs -ln(1e-7), not infinity.
        let l = logloss(&[0.0], &[1.0]).unwrap_or(f64::NAN);
        assert!((l - 16.11809565095832).abs() < 1e-9, "{l}");
        assert_eq!(logloss(&[], &[]), None);
        assert_eq!(logloss(&[0.5], &[]), None);
    }

    fn write(dir: &Path, file: &str, text: &str) {
        std::fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("{file}: {e}"));
    }

    fn tiny(dir: &Path, inter: &str) {
        write(dir, USER_FILE, &format!("{USER_HEADER}\n1\t17\tF\twriter\t1\n2\t56\tM\tartist\t2\n"));
        write(
            dir,
            ITEM_FILE,
            &format!("{ITEM_HEADER}\n1\tA Film\t1939\tDrama Action\n2\tB\tunkonwn\tunknown\n3\tC\t1995\t\n"),
        );
        write(dir, INTER_FILE, &format!("{INTER_HEADER}\n{inter}"));
    }

    #[test]
    fn tiny_stream_by_hand() {
        let dir = std::env::temp_dir().join(format!("graft-movielens-tiny-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        // Two rows share timestamp 5: user 1 sorts before user 2.
        tiny(&dir, "2\t1\t4\t5\n1\t3\t3.5\t5\n1\t2\t5\t1\n2\t3\t1\t9\n1\t1\t4\t7\n");
        let s = load(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.timestamps, [1, 5, 5, 7, 9]);
        assert_eq!(s.user_ids, [1, 1, 2, 1, 2]);
        assert_eq!(s.item_ids, [2, 3, 1, 1, 3]);
        assert_eq!(s.labels, [1.0, 0.0, 1.0, 1.0, 0.0]);
        assert_eq!(s.groups, [0, 0, 6, 0, 6]);
        assert_eq!(s.ids[GENRE][..12], [18, 19, 19, 19, 19, 19, 19, 19, 19, 19, 19, 19]);
        assert_eq!(s.ids[GENRE][12..18], [7, 0, 19, 19, 19, 19]);
        assert_eq!(s.ids[DECADE], [0, 7, 1, 1, 7]);
        assert_eq!(s.dense[0], 0.0);
        assert_eq!(s.dense[2], year_norm(Some(1939)));
        assert_eq!((s.train_range(), s.replay_range()), (0..4, 4..5));
        let b = s.batch(3..5).unwrap_or_else(|| panic!("batch"));
        assert_eq!(b.ids_for("ids_user").map(|c| c.data.clone()), Some(vec![0, 1]));
        assert_eq!(b.ids_for("ids_genre").map(|c| c.data.len()), Some(12));
        assert!(s.batch(4..6).is_none());
        let d = s.digest();
        assert_eq!((d.rows, d.clicks, d.first_timestamp, d.last_timestamp), (1, 0, Some(9), Some(9)));
        assert_eq!(d.id_checksums[GENRE], 19 * 21);
        let all = s.digest_of(0..5).unwrap_or_else(|| panic!("digest"));
        assert_eq!(all.label_checksum, 1 + 3 + 4);
        assert_eq!(all.timestamp_checksum, 2 * 4 + 3 * 4 + 4 * 6 + 5 * 8);

        // Hostile inputs are errors, not panics.
        for (inter, needle) in [
            ("1\t1\t4\n", "columns"),
            ("1\t2000\t4\t1\n", "out of range"),
            ("1\t9\t4\t1\n", "no features"),
            ("1\tx\t4\t1\n", "item_id"),
            ("3\t1\t4\t1\n", "no features"),
        ] {
            tiny(&dir, inter);
            let e = load(&dir).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(needle), "{inter:?}: {e}");
        }
        write(&dir, USER_FILE, "user_id:token\n");
        assert!(load(&dir).err().is_some_and(|e| e.to_string().contains("header")));
        std::fs::remove_dir_all(&dir).ok();
    }
}
