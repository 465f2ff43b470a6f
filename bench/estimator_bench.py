"""iotguard's DeviceBaseline beside scikit-learn's LOF and IsolationForest, on real IoT traffic.

    .venv/bin/python bench/estimator_bench.py [--window 10] [--train-frac 0.5] [--seed 0]
                                              [--split time|random] [--as-scored] [--nbaiot DIR] [--json]

What it measures: for each device, every model is fitted on the SAME benign training rows
and scored on the SAME held-out benign rows and attack rows.  Per device and overall:

* AUROC of the model's anomaly score (held-out benign = 0, attack = 1): how well it ranks,
  whatever its threshold;
* at each model's OWN threshold, the true-alarm rate (attack rows flagged) and the
  false-alarm rate (held-out benign rows flagged): what an operator would see;
* fit time and score time (all test rows, one call), time.perf_counter.

Models and their thresholds:

* ``DeviceBaseline`` (controller/detection/baseline.py) built exactly as the controller's
  ProfileStore builds a device's own baseline: far=1e-4 (the config default), min_scale 0.1
  for share features and 0.5 otherwise, two_sided = the controller's TWO_SIDED, multivariate
  only with >= MV_WINDOWS_PER_FEATURE (10) training windows per feature.  Flagged = predict
  == -1, i.e. anomaly_score > threshold_ (threshold_ calibrated on the training rows by the
  estimator itself).  Anomaly score = -score_samples.  Nothing is tuned.
* ``LOF``: LocalOutlierFactor(novelty=True, n_neighbors=min(20, n_train - 1)); flagged =
  its default predict (contamination "auto", offset -1.5).
* ``IForest``: IsolationForest(random_state=seed); flagged = its default predict.
  LOF and IForest see log1p(max(x, 0)) standardised on the training rows (StandardScaler):
  the same log space DeviceBaseline models in; raw, LOF's distances are all bytes/s.

Data (all shipped in the repository, see tests/data/captures/SOURCES.md; no network):

* IoT-23 Zeek connection logs: six real Raspberry Pi devices infected with Mirai, Hakai,
  Torii or a trojan (benign and malicious windows), and a Philips HUE bridge and an Amazon
  Echo (benign only).  Each log is cut into --window second windows of its device of
  interest and turned into iotguard's own 15 FEATURES (bench/datasets.py explains how), so
  DeviceBaseline gets the feature vector it is built for.  A window is an attack window if
  any of its connections is labelled malicious.
* Two benign Lifecycle pcaps (a smart plug's whole lifecycle: setup, idle on/off, local,
  remote, voice and button control, update; a camera idling), windowed the same way from
  the packets.  Benign only: they give false-alarm rates, no AUROC.

Rows: the windows as extracted.  With ``--as-scored``, as the controller fits and scores
them: a device's training windows have the packet mix of sparse windows shrunk towards the
median of those that sent (BaselineStore._defined), and each scored window towards the
training median (features.shrink_tx_mix, as Detector.on_window does with the baseline's
median), so a share measured on one NTP packet is not the device's mix.  Every model gets
the same rows either way.

Split: time-ordered, as a baseline meets traffic: the first --train-frac of a device's
benign windows train, its later benign windows are held out; all attack windows are
tested.  new_dst_share's known destinations are those of the training windows.
``--split random`` shuffles benign windows instead (seeded).

N-BaIoT (optional, ``--nbaiot DIR``, a local copy of the UCI files; none is shipped): per
device, benign rows split at random (seeded) into train/held-out, attack rows from every
Mirai/Gafgyt file.  DeviceBaseline gets the full 115-column vector: it accepts any width
(validate_data checks only that scoring has the fitting width), models each column in
log1p space, and clips negatives to 0, which N-BaIoT's covariance/pcc columns have; with
its defaults (min_scale 0.5, no two-sided columns), as for an unknown feature set.

Overall rows: AUROC is the mean over devices that have attack rows (per-device models'
scores are not on one scale); rates pool all rows (flagged / total); times are sums.
Runs in well under two minutes on two cores (about 6 s here); seeds are fixed.
Needs numpy, scikit-learn and dpkt (for the pcaps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from importlib import metadata

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from sklearn.ensemble import IsolationForest  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402
from sklearn.neighbors import LocalOutlierFactor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import FunctionTransformer, StandardScaler  # noqa: E402

from bench import datasets  # noqa: E402
from controller.detection.baseline import DeviceBaseline  # noqa: E402
from controller.detection.profiles import BaselineStore  # noqa: E402
from controller.telemetry.features import shrink_tx_mix  # noqa: E402

try:   # the controller's own settings for a device baseline
    from controller.telemetry.features import FEATURES as CTRL_FEATURES, FRACTIONS, MIN_LEVEL, TWO_SIDED
except ImportError:    # pragma: no cover - only if the controller's layout moves
    CTRL_FEATURES = datasets.FEATURES
    MIN_LEVEL = 0.0
    FRACTIONS = tuple(i for i, f in enumerate(datasets.FEATURES) if f.endswith("_share"))
    TWO_SIDED = tuple(datasets.IDX[n] for n in ("tcp_share", "udp_share", "icmp_share",
                                                "other_share", "mean_pkt_size"))
try:
    from controller.detection.profiles import MV_WINDOWS_PER_FEATURE
except ImportError:    # pragma: no cover
    MV_WINDOWS_PER_FEATURE = 10

FAR = 1e-4          # controller/config.py's default false_alarm_rate
MODELS = ("DeviceBaseline", "LOF", "IForest")


def _log1p(X):
    return np.log1p(np.maximum(X, 0.0))


def make_models(n_train: int, n_features: int, iotguard_features: bool, seed: int) -> dict:
    if iotguard_features:
        floor = [0.1 if j in FRACTIONS else 0.5 for j in range(n_features)]
        db = DeviceBaseline(far=FAR, min_scale=floor, two_sided=TWO_SIDED, min_level=MIN_LEVEL,
                            multivariate=n_train >= MV_WINDOWS_PER_FEATURE * n_features)
    else:
        db = DeviceBaseline(far=FAR, multivariate=n_train >= MV_WINDOWS_PER_FEATURE * n_features)
    pre = (FunctionTransformer(_log1p), StandardScaler())
    return {
        "DeviceBaseline": db,
        "LOF": make_pipeline(*pre, LocalOutlierFactor(novelty=True, n_neighbors=max(1, min(20, n_train - 1)))),
        "IForest": make_pipeline(*pre, IsolationForest(random_state=seed)),
    }


def evaluate(name: str, device: str, Xtr, Xben, Xatt, iotguard_features: bool, seed: int) -> dict:
    row = {"device": name, "what": device, "n_train": int(len(Xtr)), "n_benign_test": int(len(Xben)),
           "n_attack": int(len(Xatt)), "models": {}}
    Xtest = np.vstack([Xben, Xatt])
    y = np.r_[np.zeros(len(Xben)), np.ones(len(Xatt))]
    for mname, model in make_models(len(Xtr), Xtr.shape[1], iotguard_features, seed).items():
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(Xtr)
        t1 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = -model.score_samples(Xtest)        # higher = more anomalous, every model
            flag = model.predict(Xtest) == -1          # each model's own threshold
        t2 = time.perf_counter()
        m = {"fit_s": t1 - t0, "score_s": t2 - t1,
             "flagged_benign": int(flag[y == 0].sum()), "flagged_attack": int(flag[y == 1].sum()),
             "far": float(flag[y == 0].mean()) if len(Xben) else None,
             "tar": float(flag[y == 1].mean()) if len(Xatt) else None,
             "auroc": float(roc_auc_score(y, score)) if len(Xben) and len(Xatt) else None}
        if mname == "DeviceBaseline":
            m["threshold"] = float(model.threshold_)
            m["multivariate"] = bool(model.multivariate)
        row["models"][mname] = m
    return row


def split_windows(w: datasets.Windows, train_frac: float, split: str, rng: np.random.Generator):
    ben = np.flatnonzero(~w.malicious)
    att = np.flatnonzero(w.malicious)
    if split == "random":
        ben = rng.permutation(ben)
    n = int(round(train_frac * len(ben)))
    tr, ho = np.sort(ben[:n]), np.sort(ben[n:])
    known = set().union(*(w.dst_bytes[i].keys() for i in tr)) if len(tr) else set()
    X = datasets.finalize_new_dst_share(w, known)
    return X[tr], X[ho], X[att]


def as_scored(Xtr, Xben, Xatt):
    """The rows the controller fits and scores: sparse windows' mix shrunk (see the docstring)."""
    Xtr = BaselineStore._defined(Xtr)
    fill = np.expm1(np.median(np.log1p(np.maximum(Xtr, np.asarray(MIN_LEVEL))), axis=0))
    return Xtr, shrink_tx_mix(Xben, fill), shrink_tx_mix(Xatt, fill)


def overall(rows: list[dict]) -> dict:
    out = {}
    for m in MODELS:
        ms = [r["models"][m] for r in rows]
        nb = sum(r["n_benign_test"] for r in rows)
        na = sum(r["n_attack"] for r in rows)
        aucs = [x["auroc"] for x in ms if x["auroc"] is not None]
        out[m] = {"auroc": float(np.mean(aucs)) if aucs else None,
                  "tar": sum(x["flagged_attack"] for x in ms) / na if na else None,
                  "far": sum(x["flagged_benign"] for x in ms) / nb if nb else None,
                  "fit_s": sum(x["fit_s"] for x in ms), "score_s": sum(x["score_s"] for x in ms)}
    return out


def run(args) -> dict:
    if tuple(CTRL_FEATURES) != datasets.FEATURES:
        raise SystemExit("bench/datasets.py FEATURES no longer match controller.telemetry.features.FEATURES")
    rng = np.random.default_rng(args.seed)
    rows = []
    t0 = time.perf_counter()
    for w in datasets.iot23_scenarios(args.window) + datasets.lifecycle_devices(args.window):
        Xtr, Xben, Xatt = split_windows(w, args.train_frac, args.split, rng)
        if len(Xtr) < 3:
            continue
        if args.as_scored:
            Xtr, Xben, Xatt = as_scored(Xtr, Xben, Xatt)
        r = evaluate(w.name, w.device, Xtr, Xben, Xatt, True, args.seed)
        r["source"] = "iot23" if "iot23" in w.source else "lifecycle"
        rows.append(r)
    groups = {"iotguard_features": rows}
    if args.nbaiot:
        nb_rows = []
        for d in datasets.load_nbaiot(args.nbaiot, max_benign=args.nbaiot_benign,
                                      max_attack_per_file=args.nbaiot_attack, seed=args.seed):
            idx = rng.permutation(len(d.benign))
            n = int(round(args.train_frac * len(idx)))
            r = evaluate(d.device, "N-BaIoT " + d.device.replace("_", " "), d.benign[idx[:n]],
                         d.benign[idx[n:]], d.attack, False, args.seed)
            r["source"] = "nbaiot"
            nb_rows.append(r)
        groups["nbaiot"] = nb_rows
    return {
        "benchmark": "estimator_bench",
        "params": {"window_s": args.window, "train_frac": args.train_frac, "split": args.split,
                   "seed": args.seed, "far": FAR, "nbaiot": args.nbaiot,
                   "as_scored": args.as_scored},
        "env": {"python": platform.python_version(), "numpy": np.__version__,
                "scikit-learn": metadata.version("scikit-learn"),
                "dpkt": _version("dpkt"), "machine": platform.machine(), "cpus": os.cpu_count()},
        "groups": {g: {"devices": rs, "overall": overall(rs) if rs else {}} for g, rs in groups.items()},
        "total_s": time.perf_counter() - t0,
    }


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _pct(v) -> str:
    return "   -  " if v is None else f"{100 * v:5.1f}%"


def _auc(v) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def print_table(res: dict) -> None:
    p = res["params"]
    print(f"estimator_bench: window {p['window_s']:g} s, train on the first {p['train_frac']:.0%} of each "
          f"device's benign windows ({p['split']} split), seed {p['seed']}, DeviceBaseline far={p['far']:g}, "
          f"{'sparse windows shrunk as the controller does' if p.get('as_scored') else 'windows as extracted'}")
    print("TAR = attack windows flagged, FAR = held-out benign windows flagged, each at the model's own "
          "threshold; AUROC = ranking of held-out benign vs attack.\n")
    for g, body in res["groups"].items():
        title = {"iotguard_features": "IoT-23 conn logs and Lifecycle pcaps -> iotguard's 15 FEATURES",
                 "nbaiot": "N-BaIoT, 115 published features"}[g]
        print(f"== {title}")
        hdr = f"{'device':<34}{'train':>6}{'ben':>6}{'att':>6}  "
        hdr += "  ".join(f"{m:^33}" for m in MODELS)
        print(hdr)
        print(" " * 54 + "  ".join(f"{'AUROC':>6} {'TAR':>6} {'FAR':>6} {'fit ms':>6} {'sc ms':>5}"
                                    for _ in MODELS))
        for r in body["devices"]:
            cells = []
            for m in MODELS:
                x = r["models"][m]
                cells.append(f"{_auc(x['auroc']):>6} {_pct(x['tar']):>6} {_pct(x['far']):>6} "
                             f"{1e3 * x['fit_s']:6.1f} {1e3 * x['score_s']:5.1f}")
            print(f"{r['device'][:33]:<34}{r['n_train']:>6}{r['n_benign_test']:>6}{r['n_attack']:>6}  "
                  + "  ".join(cells))
        o = body["overall"]
        if o:
            cells = [f"{_auc(o[m]['auroc']):>6} {_pct(o[m]['tar']):>6} {_pct(o[m]['far']):>6} "
                     f"{1e3 * o[m]['fit_s']:6.1f} {1e3 * o[m]['score_s']:5.1f}" for m in MODELS]
            n = body["devices"]
            print(f"{'overall':<34}{sum(r['n_train'] for r in n):>6}{sum(r['n_benign_test'] for r in n):>6}"
                  f"{sum(r['n_attack'] for r in n):>6}  " + "  ".join(cells))
        db = [(r["device"], r["models"]["DeviceBaseline"]) for r in body["devices"]]
        print("DeviceBaseline thresholds: " + ", ".join(
            f"{d.split('-Capture-')[-1]} {x['threshold']:.1f}{'' if x['multivariate'] else ' (univariate)'}"
            for d, x in db))
        print()
    print(f"total {res['total_s']:.1f} s; python {res['env']['python']}, scikit-learn "
          f"{res['env']['scikit-learn']}, dpkt {res['env']['dpkt']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Run iotguard's DeviceBaseline beside LocalOutlierFactor(novelty=True) and IsolationForest "
                    "on the same splits of real IoT traffic shipped in tests/data/captures (IoT-23 infected "
                    "and benign devices, Lifecycle benign pcaps), and optionally a local N-BaIoT copy. Reports "
                    "per device and overall AUROC, true-alarm and false-alarm rates at each model's own "
                    "threshold, and fit/score times. Offline; fixed seeds.",
        epilog="The module docstring (python -c 'import bench.estimator_bench as b; help(b)') explains the "
               "feature mapping, the split and the thresholds.")
    ap.add_argument("--window", type=float, default=10.0,
                    help="window length in seconds for IoT-23 and pcap rows (iotguard's poll interval; default 10)")
    ap.add_argument("--train-frac", type=float, default=0.5,
                    help="share of each device's benign windows used for fitting (default 0.5)")
    ap.add_argument("--split", choices=("time", "random"), default="time",
                    help="time: the earliest benign windows train (default); random: seeded shuffle")
    ap.add_argument("--seed", type=int, default=0, help="seed for IsolationForest and random splits (default 0)")
    ap.add_argument("--as-scored", action="store_true",
                    help="fit and score the IoT-23 and pcap windows as the controller does: sparse windows' "
                         "packet mix shrunk towards the device's median (default: the windows as extracted)")
    ap.add_argument("--nbaiot", metavar="DIR", help="also run on a local N-BaIoT copy (UCI or per-device layout)")
    ap.add_argument("--nbaiot-benign", type=int, default=4000, help="benign rows sampled per N-BaIoT device")
    ap.add_argument("--nbaiot-attack", type=int, default=300, help="rows sampled per N-BaIoT attack file")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    args = ap.parse_args(argv)
    if not 0 < args.train_frac < 1:
        ap.error("--train-frac must be in (0, 1)")
    res = run(args)
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
