"""Pattern detectors with validation: emails, URL credentials, IPv4/IPv6, payment cards (Luhn), IBANs (mod 97) and
Chinese resident ID numbers (ISO 7064 MOD 11-2 check digit, region and birth date). Phones are in ``phone.py``.

Each detector is ``detect_x(text) -> list[Finding]``. Regular expressions only find candidates; a candidate is kept
only when it passes its checks, which is what keeps order numbers, dates, prices and version strings out. Word
boundaries are ASCII-only on purpose: Python's ``\\w`` matches CJK characters, and Chinese text writes numbers
right against them (电话13812345678).
"""

from __future__ import annotations

import datetime
import ipaddress
import re

from .findings import Finding

MAX_LOOKBACK = 24  # how far back the context checks (version, order number) look
_NOT_ALNUM_BEFORE = r"(?<![0-9A-Za-z_])"
_NOT_ALNUM_AFTER = r"(?![0-9A-Za-z_])"
# "order 4111...", "订单号：6222...", "/orders/5105...": a number named as an order, tracking, invoice or transaction
# reference is not a card, ID or phone even when its check digit happens to fit (one random number in ten does)
REFERENCE_BEFORE_RE = re.compile(r"(?:orders?|tracking|invoice|ref|txn|transaction|订单|单号|运单|流水|发票|交易)"
                                 r"[\s_\-/#]{0,2}(?:no\.?|number|id|号|编号|号码)?[\s:：#=/]*$", re.IGNORECASE)


def named_as_reference(text: str, start: int) -> bool:
    """Whether the words just before ``start`` name what follows as an order/tracking/transaction number."""
    return REFERENCE_BEFORE_RE.search(text[max(0, start - MAX_LOOKBACK):start]) is not None

# ------------------------------------------------------------------------------------------------ email, URL
EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9](?:[A-Za-z0-9._%+\-]{0,62}[A-Za-z0-9_%+\-])?"
                      r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![A-Za-z0-9\-])")
# scheme://user[:password]@host: the finding is the user information, the part between "//" and "@"
URL_CREDENTIALS_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{1,15}://([^\s/?#@:]+(?::[^\s/?#@]*)?|:[^\s/?#@]+)"
                                r"@(?=[A-Za-z0-9\[])")


def detect_email(text: str) -> list[Finding]:
    return [Finding(m.start(), m.end(), "EMAIL") for m in EMAIL_RE.finditer(text) if ".." not in m.group()]


def detect_url_credentials(text: str) -> list[Finding]:
    return [Finding(m.start(1), m.end(1), "URL_CREDENTIALS") for m in URL_CREDENTIALS_RE.finditer(text)]


# ------------------------------------------------------------------------------------------------ IP addresses
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4_RE = re.compile(rf"(?<![0-9A-Za-z_.]){_OCTET}(?:\.{_OCTET}){{3}}(?![0-9A-Za-z_]|\.\d)")
# an address has "::" or seven colons (six before an embedded IPv4): times such as 12:30:45 never start a match
IPV6_RE = re.compile(r"(?<![0-9A-Za-z_:.])(?=[0-9A-Fa-f]{0,4}:)(?=[0-9A-Fa-f:.]*::|(?:[0-9A-Fa-f]{0,4}:){6})"
                     r"[0-9A-Fa-f:][0-9A-Fa-f:.]{1,44}(?![0-9A-Za-z_:])")
# "version 1.2.3.4", "v 10.0.0.1", "版本 2.1.0.3": four-part version numbers are not addresses
VERSION_BEFORE_RE = re.compile(r"(?:version|release|build|ver\.?|v|版本号?|版本)[\s:：=]*$", re.IGNORECASE)


def detect_ip(text: str) -> list[Finding]:
    found = []
    for m in IPV4_RE.finditer(text):
        if not VERSION_BEFORE_RE.search(text[max(0, m.start() - MAX_LOOKBACK):m.start()]):
            found.append(Finding(m.start(), m.end(), "IP"))
    for m in IPV6_RE.finditer(text):
        s = m.group().rstrip(".")
        if ("::" not in s and s.count(":") < 6) or not any(c.isdigit() for c in s):
            continue  # times (12:30:45), "::" and "dead::beef" are not addresses; a full one has 7 colons
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            continue  # times (12:30:45), MAC addresses, ratios
        found.append(Finding(m.start(), m.start() + len(s), "IP"))
    return found


# ------------------------------------------------------------------------------------------------ payment cards
CARD_RE = re.compile(_NOT_ALNUM_BEFORE + r"\d(?:[ \-]?\d){12,18}" + _NOT_ALNUM_AFTER)
# (first digits as a number range, allowed lengths): Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay, Maestro
CARD_BRANDS = [((4, 4), (13, 16, 19)), ((51, 55), (16,)), ((2221, 2720), (16,)), ((34, 34), (15,)), ((37, 37), (15,)),
               ((6011, 6011), (16, 17, 18, 19)), ((644, 649), (16, 17, 18, 19)), ((65, 65), (16, 17, 18, 19)),
               ((3528, 3589), (16, 17, 18, 19)), ((300, 305), (14, 15, 16, 17, 18, 19)),
               ((36, 36), (14, 15, 16, 17, 18, 19)), ((38, 39), (14, 15, 16, 17, 18, 19)),
               ((62, 62), (16, 17, 18, 19)), ((81, 81), (16, 17, 18, 19)), ((50, 50), tuple(range(12, 20))),
               ((56, 58), tuple(range(12, 20))), ((67, 67), tuple(range(12, 20)))]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_brand_ok(digits: str) -> bool:
    for (lo, hi), lengths in CARD_BRANDS:
        if len(digits) in lengths and lo <= int(digits[:len(str(lo))]) <= hi:
            return True
    return False


def detect_card(text: str) -> list[Finding]:
    found = []
    for m in CARD_RE.finditer(text):
        s = m.group()
        if " " in s and "-" in s:
            continue  # real card numbers use one kind of separator
        digits = s.replace(" ", "").replace("-", "")
        if card_brand_ok(digits) and luhn_ok(digits) and not named_as_reference(text, m.start()):
            found.append(Finding(m.start(), m.end(), "CARD"))
    return found


# ------------------------------------------------------------------------------------------------ IBAN
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
IBAN_RE = re.compile(_NOT_ALNUM_BEFORE + r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def iban_ok(compact: str) -> bool:
    """Length for its country and the ISO 13616 check: the rearranged number mod 97 is 1."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def detect_iban(text: str) -> list[Finding]:
    found = []
    for m in IBAN_RE.finditer(text):
        want = IBAN_LENGTHS.get(m.group()[:2])
        if want is None:
            continue
        count, end = 0, m.start()
        for i in range(m.start(), m.end()):  # cut the candidate at the country's length (spaces not counted)
            if text[i] != " ":
                count += 1
                if count == want:
                    end = i + 1
                    break
        if count < want or (end < len(text) and (text[end].isascii() and text[end].isalnum())):
            continue
        if iban_ok(text[m.start():end].replace(" ", "")):
            found.append(Finding(m.start(), end, "IBAN"))
    return found


# ------------------------------------------------------------------------------------------------ CN resident ID
CN_ID_RE = re.compile(_NOT_ALNUM_BEFORE + r"[1-9]\d{16}[0-9Xx]" + _NOT_ALNUM_AFTER)
CN_PROVINCES = {11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53,
                54, 61, 62, 63, 64, 65, 71, 81, 82, 83}
CN_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
CN_ID_CHECK = "10X98765432"


def cn_id_ok(s: str, today: datetime.date | None = None) -> bool:
    """GB 11643: a known province, a real birth date from 1900 to today, and the MOD 11-2 check character."""
    if int(s[:2]) not in CN_PROVINCES:
        return False
    try:
        born = datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not datetime.date(1900, 1, 1) <= born <= (today or datetime.date.today()):
        return False
    return CN_ID_CHECK[sum(int(c) * w for c, w in zip(s[:17], CN_ID_WEIGHTS)) % 11] == s[17].upper()


def detect_cn_id(text: str) -> list[Finding]:
    return [Finding(m.start(), m.end(), "CN_ID") for m in CN_ID_RE.finditer(text)
            if cn_id_ok(m.group()) and not named_as_reference(text, m.start())]
