"""The user guide's raw data (docs/GUIDE.md): two synthetic providers' exports about the same
invented people, deterministic (seeded), so the guide's commands give the same files every time.

- clinic_visits.csv: a cardiology clinic's visit export (health number with spaces, names,
  vitals). Headers carry spaces and units, as real exports do.
- lab_results.csv: a laboratory's panel export for mostly the same people (health number
  written with dashes), with the outcome a consumer wants to predict.

Nobody here is real: names are drawn from short lists, numbers from a seeded generator.

    python docs/guide-data/make_data.py [--out DIR]      (default: this folder)
"""
from __future__ import annotations

import argparse
import csv
import math
import random
from pathlib import Path

SEED = 14
PEOPLE = 600          # at the clinic
LAB_SHARE = 0.9       # of them also at the lab
LAB_ONLY = 25         # at the lab only
FIRST = ["Asha", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Ines", "Jon", "Kemi", "Lars"]
LAST = ["Okafor", "Smith", "Nguyen", "Garcia", "Kowalski", "Haddad", "Tanaka", "Dubois", "Ibrahim", "Larsen"]


def _health_number(rng: random.Random) -> str:
    return f"{rng.randint(100, 999)}{rng.randint(100, 999)}{rng.randint(1000, 9999)}"


def _person(rng: random.Random) -> dict:
    age = rng.randint(30, 85)
    male = rng.random() < 0.5
    smoker = rng.random() < 0.25
    systolic = round(rng.gauss(118 + 0.45 * (age - 30) + (5 if male else 0), 14))
    heart_rate = round(rng.gauss(72 + (4 if smoker else 0), 9))
    cholesterol = round(rng.gauss(185 + 0.8 * (age - 30), 32), 1)
    glucose = round(rng.lognormvariate(math.log(98), 0.18), 1)
    score = (-6.3 + 0.065 * age + 0.018 * (systolic - 120) + 0.012 * (cholesterol - 200)
             + 0.014 * (glucose - 100) + 0.9 * smoker + 0.45 * male)
    event = int(rng.random() < 1 / (1 + math.exp(-score)))
    return {"number": _health_number(rng), "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}", "age": age,
            "sex": "M" if male else "F", "systolic": max(80, systolic), "heart_rate": max(40, heart_rate),
            "cholesterol": max(90.0, cholesterol), "glucose": glucose, "smoker": "yes" if smoker else "no",
            "event": event, "visit": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "sample": f"S-{rng.randint(10000, 99999)}"}


def write(out: Path) -> tuple[Path, Path]:
    rng = random.Random(SEED)
    people = [_person(rng) for _ in range(PEOPLE)]
    at_lab = [p for p in people if rng.random() < LAB_SHARE] + [_person(rng) for _ in range(LAB_ONLY)]
    rng.shuffle(at_lab)
    clinic, lab = out / "clinic_visits.csv", out / "lab_results.csv"
    with open(clinic, "w", newline="") as handle:
        rows = csv.writer(handle, lineterminator="\n")
        rows.writerow(["Health Number", "Patient Name", "Visit Date", "Age (years)", "Sex", "Systolic BP (mmHg)",
                       "Resting Heart Rate (bpm)", "Clinic Notes"])
        for p in people:
            n = p["number"]
            rows.writerow([f"{n[:3]} {n[3:6]} {n[6:]}", p["name"], p["visit"], p["age"], p["sex"], p["systolic"],
                           p["heart_rate"], rng.choice(["", "follow-up in 6 months", "referred", "no change"])])
    with open(lab, "w", newline="") as handle:
        rows = csv.writer(handle, lineterminator="\n")
        rows.writerow(["Patient Health No.", "Sample ID", "Total Cholesterol (mg/dL)", "Fasting Glucose (mg/dL)",
                       "Smoker", "Cardiac Event Within 5y"])
        for p in at_lab:
            n = p["number"]
            rows.writerow([f"{n[:3]}-{n[3:6]}-{n[6:]}", p["sample"], p["cholesterol"], p["glucose"], p["smoker"],
                           p["event"]])
    return clinic, lab


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    for path in write(parser.parse_args().out):
        print(path)
