"""The MovieLens-100K click stream: parsing, ordering, split and per-row features.

This module is the Python side of a definition that `tests/src/movielens.rs` reproduces bit
for bit; README.md in this folder is the prose version and `features.json` (written by
`features_json()`) the machine-readable one. Change all three together.

Only numpy and the standard library are used, so the definition can be read without torch.
"""
import math
import os

import numpy as np

DATA_ENV = "GRAFT_ML100K_DIR"
INTER_FILE, USER_FILE, ITEM_FILE = "ml-100k.inter", "ml-100k.user", "ml-100k.item"

EMB_DIM = 8
TRAIN_FRACTION_NUM, TRAIN_FRACTION_DEN = 8, 10  # train rows = floor(n * 8 / 10), in integers
CLICK_MIN_RATING = 4.0

N_USERS = 943
N_ITEMS = 1682
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # bucket = number of edges <= age
AGE_LABELS = ("<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+")
GENDERS = ("F", "M")
# The 21 occupation names of ml-100k.user, in sorted (byte) order; id = index.
OCCUPATIONS = (
    "administrator", "artist", "doctor", "educator", "engineer", "entertainment", "executive",
    "healthcare", "homemaker", "lawyer", "librarian", "marketing", "none", "other", "programmer",
    "retired", "salesman", "scientist", "student", "technician", "writer",
)
# The 19 genre tokens of the `class` column of ml-100k.item, in sorted (byte) order; id = index.
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
    "Western", "unknown",
)
GENRE_SLOTS = 6  # the most genres any item has
# Release decade: 0 = year missing, 1 = before 1940, 2 = 1940s, ..., 7 = 1990s (and later).
DECADE_LABELS = ("missing", "<1940", "1940s", "1950s", "1960s", "1970s", "1980s", "1990s+")
YEAR_CENTER, YEAR_SCALE = 1985.0, 15.0

# (field, ONNX input, torch module, vocab, slots). The pad id of every field is its vocab size.
FIELDS = (
    ("user", "ids_user", "emb_user", N_USERS, 1),
    ("item", "ids_item", "emb_item", N_ITEMS, 1),
    ("age", "ids_age", "emb_age", len(AGE_LABELS), 1),
    ("gender", "ids_gender", "emb_gender", len(GENDERS), 1),
    ("occupation", "ids_occupation", "emb_occupation", len(OCCUPATIONS), 1),
    ("genre", "ids_genre", "emb_genre", len(GENRES), GENRE_SLOTS),
    ("decade", "ids_decade", "emb_decade", len(DECADE_LABELS), 1),
)
FIELD_NAMES = tuple(f[0] for f in FIELDS)
DENSE_INPUT, DENSE_WIDTH = "dense", 1
CONCAT_WIDTH = DENSE_WIDTH + EMB_DIM * len(FIELDS)
N_GROUPS = len(AGE_LABELS)  # user group = age bucket
GROUP_NAMES = tuple(f"age{g}" for g in range(N_GROUPS))


def locate(default=None):
    """The ml-100k folder: $GRAFT_ML100K_DIR, else `default`."""
    d = os.environ.get(DATA_ENV) or default
    if not d or not os.path.isfile(os.path.join(d, INTER_FILE)):
        raise SystemExit(f"MovieLens-100K not found: set {DATA_ENV} to the folder holding {INTER_FILE}")
    return d


def _table(path, header):
    """Rows of a RecBole atomic file: tab-separated, first line `name:type` headers, LF endings."""
    with open(path, "rb") as fh:
        text = fh.read().decode("utf-8")
    lines = text.split("\n")
    if lines[0] != header:
        raise ValueError(f"{path}: unexpected header {lines[0]!r}")
    rows = [ln.split("\t") for ln in lines[1:] if ln != ""]
    width = header.count("\t") + 1
    for r in rows:
        if len(r) != width:
            raise ValueError(f"{path}: row {r!r} has {len(r)} columns, expected {width}")
    return rows


def age_bucket(age):
    return sum(1 for e in AGE_EDGES if age >= e)


def parse_year(token):
    """A release_year made only of ASCII digits is a year; anything else ('unkonwn', 'V') is missing."""
    return int(token) if token and all("0" <= c <= "9" for c in token) else None


def decade_id(year):
    if year is None:
        return 0
    if year < 1940:
        return 1
    return min(7, 2 + (year - 1940) // 10)


def year_norm(year):
    """f32((year - 1985) / 15) with the division in f64; 0.0 when the year is missing."""
    return np.float32(0.0) if year is None else np.float32((year - YEAR_CENTER) / YEAR_SCALE)


class Stream:
    """All interactions in stream order, with the model's inputs per row.

    Attributes (n = 100000): timestamp/user_id/item_id i64 [n] (raw ids), rating f64 [n],
    label f32 [n], group i64 [n], dense f32 [n,1], ids[field] i64 [n,slots].
    """

    def __init__(self, folder):
        inter = _table(os.path.join(folder, INTER_FILE), "user_id:token\titem_id:token\trating:float\ttimestamp:float")
        users = _table(os.path.join(folder, USER_FILE),
                       "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token")
        items = _table(os.path.join(folder, ITEM_FILE),
                       "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq")

        occ_id = {o: i for i, o in enumerate(OCCUPATIONS)}
        user_feat = {}  # raw user id -> (age bucket, gender id, occupation id)
        for uid, age, gender, occ, _zip in users:
            user_feat[int(uid)] = (age_bucket(int(age)), GENDERS.index(gender), occ_id[occ])
        genre_id = {g: i for i, g in enumerate(GENRES)}
        item_feat = {}  # raw item id -> (genre ids padded, decade id, year norm)
        for iid, _title, year_tok, classes in items:
            genres = [genre_id[t] for t in classes.split(" ") if t != ""]
            if len(genres) > GENRE_SLOTS:
                raise ValueError(f"item {iid}: {len(genres)} genres > {GENRE_SLOTS} slots")
            padded = genres + [len(GENRES)] * (GENRE_SLOTS - len(genres))
            year = parse_year(year_tok)
            item_feat[int(iid)] = (padded, decade_id(year), year_norm(year))

        raw = np.array([(int(t), int(u), int(i)) for u, i, _r, t in inter], dtype=np.int64)
        rating = np.array([float(r) for _u, _i, r, _t in inter], dtype=np.float64)
        order = np.lexsort((raw[:, 2], raw[:, 1], raw[:, 0]))  # last key is primary: timestamp, user, item
        raw, rating = raw[order], rating[order]
        n = len(raw)
        self.n = n
        self.timestamp, self.user_id, self.item_id = raw[:, 0].copy(), raw[:, 1].copy(), raw[:, 2].copy()
        self.rating = rating
        self.label = (rating >= CLICK_MIN_RATING).astype(np.float32)

        uf = np.array([user_feat[u] for u in self.user_id.tolist()], dtype=np.int64)
        itf = [item_feat[i] for i in self.item_id.tolist()]
        if self.user_id.min() < 1 or self.user_id.max() > N_USERS or self.item_id.min() < 1 or self.item_id.max() > N_ITEMS:
            raise ValueError("user/item id out of range")
        self.group = uf[:, 0].copy()
        self.dense = np.array([[f[2]] for f in itf], dtype=np.float32)
        self.ids = {
            "user": (self.user_id - 1).reshape(n, 1),
            "item": (self.item_id - 1).reshape(n, 1),
            "age": uf[:, 0:1].copy(),
            "gender": uf[:, 1:2].copy(),
            "occupation": uf[:, 2:3].copy(),
            "genre": np.array([f[0] for f in itf], dtype=np.int64),
            "decade": np.array([[f[1]] for f in itf], dtype=np.int64),
        }
        self.n_train = n * TRAIN_FRACTION_NUM // TRAIN_FRACTION_DEN

    def train(self):
        return slice(0, self.n_train)

    def replay(self):
        return slice(self.n_train, self.n)

    def inputs(self, rows):
        """ONNX-named input arrays for a slice or index array of rows."""
        feeds = {DENSE_INPUT: self.dense[rows]}
        for name, inp, _m, _v, _s in FIELDS:
            feeds[inp] = self.ids[name][rows]
        return feeds

    def digest(self, rows):
        """Aggregates that prove a loader built the same rows in the same order (see README.md).

        With k the 0-based row within the part and w = k + 1: plain sums, and "checksums" that
        weight row k by w (and slot s by s + 1), so a row swap or a misplaced id changes them.
        Integers are exact in i64; the dense ones are f64 sums of the f32 values.
        """
        n = len(self.label[rows])
        w = np.arange(1, n + 1, dtype=np.int64)
        ts = self.timestamp[rows]
        out = {
            "rows": int(n),
            "clicks": int(self.label[rows].sum()),
            "label_checksum": int((w * self.label[rows].astype(np.int64)).sum()),
            "first_timestamp": int(ts[0]),
            "last_timestamp": int(ts[-1]),
            "timestamp_checksum": int((w * (ts - ts[0])).sum()),
            "group_sum": int(self.group[rows].sum()),
            "group_checksum": int((w * self.group[rows]).sum()),
            "dense_sum": float(self.dense[rows].astype(np.float64).sum()),
            "dense_checksum": float((w[:, None].astype(np.float64) * self.dense[rows].astype(np.float64)).sum()),
            "id_sums": {},
            "id_checksums": {},
        }
        for f in FIELD_NAMES:
            ids = self.ids[f][rows]
            slot_w = np.arange(1, ids.shape[1] + 1, dtype=np.int64)
            out["id_sums"][f] = int(ids.sum())
            out["id_checksums"][f] = int((w * (ids * slot_w).sum(axis=1)).sum())
        return out


def features_json():
    return {
        "format_version": 1,
        "source": "RecBole 1.2.1 wheel, recbole/dataset_example/ml-100k/{ml-100k.inter, ml-100k.user, ml-100k.item}",
        "order": "sort all interactions by (timestamp, user_id, item_id), each compared as an integer",
        "label": f"click = 1.0 if rating >= {CLICK_MIN_RATING} else 0.0 (f32)",
        "split": "train part = rows [0, floor(0.8 n)), replay part = the rest, in stream order",
        "embedding_dim": EMB_DIM,
        "embedding_bag": "sum over the slots; every field's pad id = its vocab size (an all-zero row in the ONNX table)",
        "dense": {
            "input": DENSE_INPUT,
            "width": DENSE_WIDTH,
            "columns": [{
                "name": "release_year_norm",
                "value": "f32((year - 1985) / 15) with the division in f64; 0.0 when the year is missing",
                "year": "the item's release_year token if it is non-empty and all ASCII digits, else missing",
            }],
        },
        "fields": [
            {"name": name, "input": inp, "module": mod, "vocab": v, "pad_id": v, "slots": s}
            for name, inp, mod, v, s in FIELDS
        ],
        "field_values": {
            "user": "user_id - 1",
            "item": "item_id - 1",
            "age": "age bucket = number of age_edges <= age",
            "gender": "index in genders",
            "occupation": "index in occupations",
            "genre": "index in genres of each space-separated token of the item's class column, in file order, "
                     "then pad ids up to the slot count",
            "decade": "0 if the year is missing, 1 if year < 1940, else min(7, 2 + (year - 1940) // 10)",
        },
        "age_edges": list(AGE_EDGES),
        "age_labels": list(AGE_LABELS),
        "genders": list(GENDERS),
        "occupations": list(OCCUPATIONS),
        "genres": list(GENRES),
        "decade_labels": list(DECADE_LABELS),
        "concat": {
            "order": [DENSE_INPUT] + [f"emb_{f}" for f in FIELD_NAMES],
            "width": CONCAT_WIDTH,
        },
        "groups": {
            "by": "age bucket (the age field's id)",
            "count": N_GROUPS,
            "names": list(GROUP_NAMES),
        },
    }


def _selfcheck():
    assert list(OCCUPATIONS) == sorted(OCCUPATIONS) and len(OCCUPATIONS) == 21
    assert list(GENRES) == sorted(GENRES) and len(GENRES) == 19
    assert [decade_id(y) for y in (None, 1939, 1940, 1949, 1950, 1990, 1998, 2005)] == [0, 1, 2, 2, 3, 7, 7, 7]
    assert [age_bucket(a) for a in (7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73)] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert math.isclose(float(year_norm(2000)), 1.0)


_selfcheck()
