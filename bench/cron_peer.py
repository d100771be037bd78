#!/usr/bin/env python3
"""Helper for bench/cron.sh: makes the expressions and runs the peer, Python's croniter.

  cron_peer.py generate COUNT SEED          expressions (one per line, optional TAB zone) to stdout
  cron_peer.py compare FILE KILN_OUT FROM SUBSET_OUT
      translates every expression croniter can read into its dialect, computes the next fire
      after FROM with croniter in the same zone, compares with kiln's answers (one line per
      expression, ISO-8601 UTC, "none" or "error: ..."), writes the expressions both read to
      SUBSET_OUT (for timing kiln on the same input) and prints a summary; the last line is
      machine-readable: PEER compared=M equal=N parse_s=… next_s=…
"""

import datetime as dt
import random
import sys
import time
from zoneinfo import ZoneInfo

from croniter import croniter

ZONES = [None, None, None, "America/New_York", "Europe/Berlin", "Asia/Kolkata", "Australia/Sydney",
         "America/Los_Angeles", "Asia/Tokyo", "Etc/UTC", "America/Sao_Paulo"]
DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]


def generate(count, seed):
    rnd = random.Random(seed)

    def minute():
        return rnd.choice([0, 0, 0, 15, 30, 45, rnd.randrange(60)])

    def hour():
        return rnd.randrange(24)

    def day():
        return rnd.choice([str(rnd.randint(1, 7)), rnd.choice(DAYS), rnd.choice(DAYS).lower()])

    shapes = [
        (20, lambda: f"cron({minute()} {hour()} * * ? *)"),                       # daily
        (12, lambda: f"cron({minute()} {hour()} ? * {rnd.choice(['MON-FRI', '2-6', 'mon-fri'])} *)"),
        (8, lambda: f"cron({minute()} {hour()} ? * {day()} *)"),                 # weekly
        (8, lambda: f"cron({minute()} {hour()} ? * {day()}#{rnd.randint(1, 5)} *)"),
        (5, lambda: f"cron({minute()} {hour()} L * ? *)"),
        (3, lambda: f"cron({minute()} {hour()} LW * ? *)"),
        (5, lambda: f"cron({minute()} {hour()} ? * {rnd.randint(1, 7)}L *)"),
        (5, lambda: f"cron({minute()} {hour()} {rnd.choice([1, 1, 15, rnd.randint(1, 31)])}W * ? *)"),
        (8, lambda: f"cron({minute()} {hour()} {rnd.randint(1, 28)} * ? *)"),     # monthly
        (4, lambda: f"cron({minute()} {hour()} 1 {','.join(rnd.sample(MONTHS, 3))} ? *)"),
        (6, lambda: f"cron(*/{rnd.choice([5, 10, 15, 20, 30])} * * * ? *)"),
        (4, lambda: f"cron({minute()} */{rnd.choice([2, 3, 4, 6, 8, 12])} * * ? *)"),
        (3, lambda: f"cron({rnd.randrange(10)}/{rnd.choice([10, 15, 20])} {rnd.randint(6, 9)}-{rnd.randint(17, 20)} ? * MON-FRI *)"),
        (3, lambda: f"cron({minute()} {hour()} 1 */{rnd.choice([2, 3, 4, 6])} ? *)"),
        (2, lambda: f"cron({minute()} {hour()} 1 1 ? {rnd.choice(['2027,2029', '2026-2030', '2028/2', '2030'])})"),
        (1, lambda: f"cron({minute()} {hour()} ? * SUN {rnd.choice(['2020-2025', '2150-2199', '2199'])})"),
        (1, lambda: f"cron({minute()} {hour()} 29 2 ? *)"),
        (1, lambda: rnd.choice(["cron(0 9 1 * ?)", "0 9 * * 1", "cron(0 0 * * SUN *)", "cron(0 24 * * ? *)"])),
    ]
    weights = [w for w, _ in shapes]
    out = sys.stdout
    for _ in range(count):
        make = rnd.choices(shapes, weights)[0][1]
        expression = make()
        zone = rnd.choice(ZONES)
        out.write(expression + (f"\t{zone}" if zone else "") + "\n")


def to_croniter(expression):
    """AWS's six fields in croniter's dialect, or None when croniter cannot say it."""
    if not expression.startswith("cron(") or not expression.endswith(")"):
        return None
    fields = expression[5:-1].split(" ")
    if len(fields) != 6:
        return None
    minute, hour, dom, month, dow, year = fields
    if dom == "?":
        dom = "*"
    elif "L" in dom.upper() and dom.upper() != "L":
        return None  # LW: croniter has no "last weekday of the month"
    if dow == "?":
        dow = "*"
    else:
        upper = dow.upper()
        if upper == "L":
            dow = "6"  # AWS's L alone is Saturday
        elif upper.endswith("L"):
            dow = f"L{shift_day(upper[:-1])}"  # croniter writes the last Friday as L5
        elif "#" in upper:
            d, k = upper.split("#")
            dow = f"{shift_day(d)}#{k}"
        else:
            parts = []
            for item in upper.split(","):
                parts.append("-".join(shift_day(x) for x in item.split("-")))
            dow = ",".join(parts)
    if year == "*":
        return f"{minute} {hour} {dom} {month} {dow}"
    years = [int(y) for y in year.replace("-", ",").replace("/", ",").split(",")]
    if max(years) > 2099:
        return None  # croniter's year field ends at 2099
    return f"{minute} {hour} {dom} {month} {dow} 0 {year}"


def shift_day(token):
    """AWS 1–7 from Sunday → croniter 0–6; names stay."""
    return str(int(token) - 1) if token.isdigit() else token


def compare(path, kiln_path, start_text, subset_path):
    start = dt.datetime.fromisoformat(start_text.replace("Z", "+00:00"))
    lines = [line.rstrip("\n") for line in open(path) if line.strip()]
    kiln = [line.rstrip("\n") for line in open(kiln_path)]
    if len(kiln) != len(lines):
        sys.exit(f"kiln printed {len(kiln)} lines for {len(lines)} expressions")
    rows = []
    for expression_line, answer in zip(lines, kiln):
        expression, _, zone = expression_line.partition("\t")
        if answer.startswith("error:"):
            continue
        translated = to_croniter(expression)
        if translated is None:
            continue
        rows.append((expression_line, expression, zone or "UTC", translated, answer))

    zones = {}
    parse_s = next_s = 0.0
    equal = 0
    differing = []
    refused = 0
    with open(subset_path, "w") as subset:
        for expression_line, expression, zone, translated, answer in rows:
            tz = zones.setdefault(zone, ZoneInfo(zone))
            local_start = start.astimezone(tz)
            t0 = time.perf_counter()
            try:
                iterator = croniter(translated, local_start)
            except Exception:  # noqa: BLE001 - croniter refuses some things AWS takes; not compared
                refused += 1
                continue
            t1 = time.perf_counter()
            try:
                fire = iterator.get_next(dt.datetime)
                theirs = fire.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            except Exception as error:  # noqa: BLE001 - e.g. no match within its 50-year window
                theirs = "none" if "failed to find" in str(error).lower() or "year" in str(error).lower() else f"error: {error}"
            t2 = time.perf_counter()
            parse_s += t1 - t0
            next_s += t2 - t1
            subset.write(expression_line + "\n")
            if theirs == answer:
                equal += 1
            else:
                differing.append((expression, zone, translated, answer, theirs))
    compared = len(rows) - refused
    print(f"expressions: {len(lines)}; kiln refused {sum(1 for a in kiln if a.startswith('error:'))}; "
          f"croniter cannot say {len(lines) - len(rows) - sum(1 for a in kiln if a.startswith('error:'))}, refused {refused}")
    print(f"agreement: {equal} of {compared} equal")
    kinds = {}
    for row in differing:
        kinds.setdefault(shape(row), []).append(row)
    for kind, group in sorted(kinds.items(), key=lambda item: -len(item[1])):
        print(f"  {len(group)} differ like: {kind}")
        for expression, zone, translated, ours, theirs in group[:3]:
            print(f"    {expression} [{zone}] croniter '{translated}': kiln {ours}, croniter {theirs}")
    print(f"PEER compared={compared} equal={equal} parse_s={parse_s:.4f} next_s={next_s:.4f}")


def shape(row):
    """A rough class of a disagreement, to group them."""
    expression, zone, _, ours, theirs = row
    fields = expression[5:-1].split(" ")
    dom, dow = fields[2], fields[4]
    if near_transition(zone, ours) or near_transition(zone, theirs):
        return "daylight saving (a skipped or repeated wall time)"
    if dom.upper().endswith("W"):
        return "nW (day n missing from the month, or at its edges)"
    if "#" in dow:
        return "n#k"
    if dow.upper().endswith("L"):
        return "nL / L"
    if fields[5] != "*":
        return "year field"
    return "other (a real difference: look at it)"


def near_transition(zone, answer):
    """Whether the zone's UTC offset changes within a day of the answer."""
    if not answer[:1].isdigit():
        return False
    moment = dt.datetime.fromisoformat(answer.replace("Z", "+00:00"))
    tz = ZoneInfo(zone)
    day = dt.timedelta(days=1)
    return (moment - day).astimezone(tz).utcoffset() != (moment + day).astimezone(tz).utcoffset()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "generate":
        generate(int(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 6 and sys.argv[1] == "compare":
        compare(*sys.argv[2:])
    else:
        sys.exit(__doc__)
