"""Masking speed: 1 MB of log-like text, mixed English and Chinese, through ``bertrt.mask`` (pattern types, tag style).

The text is generated from a seed: lines like a service writes (timestamps, request ids, amounts, order numbers,
version strings, ISBNs) and prose, with personal data planted in about half the lines (emails, phones, cards, IBANs,
IPv4/IPv6 addresses, resident ID numbers, URL credentials), every value valid. Correctness first: the findings per
type must equal what was planted, exactly, before anything is timed. Then the whole text is masked ``--repeats``
times, record by record (``Masker.mask_many`` over the lines, as a log pipeline would) and as one string; the phone
parser's cache is cleared before each run so no run profits from an earlier one. Each row has the median wall time
and the median CPU time of the process: on a machine shared with other work, wall time also counts the time the
others held the cores, and the 1-minute load average is printed beside it.

    python bench/mask_speed.py                       # 1 MB, 5 repeats
    python bench/mask_speed.py --mb 0.1 --repeats 2  # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from bertrt.bench.machine import describe
from bertrt.mask import Masker
from bertrt.mask.patterns import card_brand_ok, cn_id_ok, luhn_ok
from bertrt.mask.phone import parse_phone

IBANS = ["DE89370400440532013000", "GB82 WEST 1234 5698 7654 32", "FR1420041010050500013M02606",
         "NL91ABNA0417164300", "ES91 2100 0418 4502 0005 1332", "CH9300762011623852957"]
NAMES = ["alice", "bob", "zhang.san", "li_na", "wang.wei", "j.doe", "m.rossi", "chen88"]
DOMAINS = ["example.com", "163.com", "qq.com", "mail.example.org", "corp.cn"]


def card(rng: random.Random) -> str:
    while True:
        digits = rng.choice(["4", "51", "62"]) + "".join(rng.choice("0123456789") for _ in range(14))
        if len(digits) == 16 and card_brand_ok(digits) and luhn_ok(digits):
            return " ".join(digits[i:i + 4] for i in range(0, 16, 4)) if rng.random() < 0.5 else digits


def cn_id(rng: random.Random) -> str:
    while True:
        s = (rng.choice(["110105", "310115", "440304", "510107"]) + str(rng.randint(1950, 2005))
             + f"{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}")
        for check in "0123456789X":
            if cn_id_ok(s + check):
                return s + check


def make_lines(target_chars: int, seed: int) -> tuple[list[str], Counter]:
    """Log lines totalling ``target_chars`` characters, and how many of each type were planted."""
    rng = random.Random(seed)
    planted: Counter = Counter()
    lines, total = [], 0
    while total < target_chars:
        ts = f"2026-12-01 {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        rid = f"{rng.getrandbits(32):08x}"
        mobile = rng.choice(["138", "139", "150", "186", "177"]) + f"{rng.randint(0, 99999999):08d}"
        email = f"{rng.choice(NAMES)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"
        ip4 = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        order, price, ms = f"{rng.randint(10**15, 10**16 - 1)}", f"{rng.randint(1, 99999)}.{rng.randint(0, 99):02d}", \
            rng.randint(1, 900)
        kind = rng.randrange(10)
        if kind == 0:
            line, types = f"{ts} INFO req={rid} user={email} ip={ip4} GET /api/orders/{order} 200 {ms}ms", \
                ["EMAIL", "IP"]
        elif kind == 1:
            line, types = f"{ts} WARN 用户 {mobile} 下单失败，订单号 {order}，金额 ¥{price}", ["PHONE"]
        elif kind == 2:
            line, types = f"{ts} INFO req={rid} payment card={card(rng)} amount=${price} status=ok", ["CARD"]
        elif kind == 3:
            line, types = f"{ts} DEBUG 实名认证 身份证 {cn_id(rng)} 通过，客户端版本 v{rng.randint(1, 9)}.{ms}.3", \
                ["CN_ID"]
        elif kind == 4:
            line, types = f"{ts} ERROR connect postgres://app:pw{rid}@{ip4}:5432/orders refused", \
                ["URL_CREDENTIALS", "IP"]
        elif kind == 5:
            line, types = f"{ts} INFO transfer to {rng.choice(IBANS)} ref INV-2026-{ms:06d} ok", ["IBAN"]
        elif kind == 6:
            ip6 = f"2408:8207:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{rng.getrandbits(16):x}"
            line, types = f"{ts} INFO client {ip6} viewed ISBN 978-7-111-54742-6 page {ms}", ["IP"]
        elif kind == 7:
            line, types = f"{ts} INFO heartbeat ok latency={ms}ms build 20231005.{ms} numpy==1.24.3", []
        elif kind == 8:
            line, types = f"系统运行正常，今日处理请求 {rng.randint(1000, 99999)} 次，平均耗时 {ms} 毫秒，联系 +86 10 6552 9988。", \
                ["PHONE"]
        else:
            line, types = (f"The nightly job finished at {ts} after {ms} seconds; {price} records were "
                           "archived and no errors were reported by the workers."), []
        lines.append(line)
        planted.update(types)
        total += len(line) + 1
    return lines, planted


def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each run. On a shared machine the CPU time is the steadier number: wall time
    also counts the time other processes held the cores."""
    wall, cpu = [], []
    for _ in range(repeats):
        parse_phone.cache_clear()
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=float, default=1.0, help="megabytes (millions of characters) of text")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per mode; the median is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    lines, planted = make_lines(int(args.mb * 1_000_000), args.seed)
    text = "\n".join(lines)
    masker = Masker()
    found = Counter(f.type for fs in masker.find_many(lines) for f in fs)
    if found != planted:
        sys.exit(f"findings differ from what was planted: found {dict(found)}, planted {dict(planted)}")
    whole = Counter(f.type for f in masker.find(text))
    if whole != planted:
        sys.exit(f"one-string findings differ from what was planted: {dict(whole)} vs {dict(planted)}")
    print(f"All findings match: {sum(planted.values())} planted in {len(lines)} lines, {len(text):,} characters "
          f"({', '.join(f'{k} {v}' for k, v in sorted(planted.items()))}). Timing.", file=sys.stderr)

    rows = {}
    for mode, fn in (("per line", lambda: masker.mask_many(lines)), ("one string", lambda: masker.mask(text))):
        times, cpu = timed(fn, args.repeats)
        med = statistics.median(times)
        rows[mode] = {"median_s": med, "min_s": min(times), "max_s": max(times), "chars_per_s": len(text) / med,
                      "cpu_median_s": statistics.median(cpu), "runs_s": times, "cpu_runs_s": cpu}
    report = {"machine": describe(None), "load_average_1min": os.getloadavg()[0], "chars": len(text), "lines": len(lines), "planted": dict(planted),
              "repeats": args.repeats, "seed": args.seed, "style": "tag", "results": rows}
    m = report["machine"]
    print("| mode | chars | median s | min-max s | chars/s | CPU s (median) | CPU | load (1 min) | commit |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for mode, r in rows.items():
        print(f"| {mode} | {len(text):,} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | "
              f"{r['chars_per_s']:,.0f} | {r['cpu_median_s']:.3f} | "
              f"{m['cpu']} ({m['cores']} cores) | {report['load_average_1min']:.1f} | "
              f"{m['commit']} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
