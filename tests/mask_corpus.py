"""A labelled set for personal-data masking, written for the tests: English and Chinese sentences holding each
pattern type, and hard negatives (dates, times, prices, order and tracking numbers, ISBNs, version strings, numbers
that fail their checksum) that must yield nothing.

Spans are marked inline as ``{TYPE|value}``; ``parse`` returns the plain text and the (type, start, end) spans.
Card numbers are the networks' published test numbers; IBANs are the registry's published examples; resident ID
numbers carry a correct GB 11643 check character and a real birth date.
"""

from __future__ import annotations

import re

MARK = re.compile(r"\{([A-Z_]+)\|([^{}]*)\}")

POSITIVES = {
    "EMAIL": [
        "Please write to {EMAIL|alice.smith@example.com} before Friday.",
        "联系邮箱：{EMAIL|zhang.san@163.com}，工作日回复。",
        "CC {EMAIL|bob+billing@mail.example.co.uk}; he handles invoices.",
        "用户{EMAIL|wang_xiaoming2020@qq.com}已注册。",
        "Reply-To: <{EMAIL|support-team@company.io}>",
        "请发送简历至{EMAIL|hr@bytedance-example.cn}。",
        "My address is {EMAIL|J.Doe@University.EDU}, thanks!",
        "login failed for user={EMAIL|li.na@sina.com.cn} ip=unknown",
        "Send the report to {EMAIL|finance.dept@example.org} and {EMAIL|ceo@example.org}.",
        "邮件 {EMAIL|chen_wei@foxmail.com} 发送失败",
        "contact: {EMAIL|m.rossi@example.it}",
    ],
    "PHONE": [
        "Call me on {PHONE|138 1234 5678} tomorrow.",
        "联系电话：{PHONE|13900138000}，请勿外传。",
        "客服热线{PHONE|400-810-8888}全天服务。",
        "Our London office: {PHONE|+44 20 7946 0958}.",
        "办公室电话 {PHONE|010-62345678} 转 3 号",
        "Reach the US team at {PHONE|(212) 555-0123} or {PHONE|+1 415-555-2671}.",
        "手机号{PHONE|+86 186 0000 1111}已绑定",
        "国际拨打：{PHONE|0086 177 1234 5678}",
        "Berlin: {PHONE|+49 30 12345678}, Paris: {PHONE|+33 1 42 68 53 00}",
        "深圳分公司 {PHONE|0755-86013388}",
        "Tokyo desk {PHONE|+81 3-1234-5678}",
        "用户 {PHONE|15012345678} 下单 2 次",
        "杭州 {PHONE|0571-8502 2088}，成都 {PHONE|028-8765 4321}",
        "Hong Kong {PHONE|+852 2123 4567}",
        "US line {PHONE|1 212-555-0123}, Beijing office {PHONE|01062345678}",
        "user_id=42 phone:{PHONE|13812345678} tel:{PHONE|+1 (415) 555-2671}",
    ],
    "CARD": [
        "Charged card {CARD|4111 1111 1111 1111} for $20.",
        "卡号{CARD|6200000000000005}支付成功",
        "Mastercard {CARD|5555-5555-5555-4444} expires 12/27.",
        "card={CARD|4012888888881881} status=declined",
        "AmEx {CARD|378282246310005} on file",
        "Discover {CARD|6011 1111 1111 1117}",
        "信用卡 {CARD|5105105105105100} 已冻结",
        "JCB {CARD|3530111333300000} and Diners {CARD|30569309025904}",
        "refund to {CARD|4242 4242 4242 4242} issued",
        "银行卡号：{CARD|6011000990139424}",
        "new MC range {CARD|2223003122003222}",
        "Amex {CARD|371449635398431} declined",
    ],
    "IBAN": [
        "Pay to {IBAN|DE89 3704 0044 0532 0130 00} by Monday.",
        "IBAN: {IBAN|GB82WEST12345698765432}",
        "收款账户 {IBAN|FR14 2004 1010 0505 0001 3M02 606} 请核对",
        "Dutch account {IBAN|NL91ABNA0417164300}.",
        "Belgian IBAN {IBAN|BE68 5390 0754 7034}",
        "Swiss: {IBAN|CH93 0076 2011 6238 5295 7}, thanks",
        "汇款至 {IBAN|ES9121000418450200051332}。",
        "IT: {IBAN|IT60 X054 2811 1010 0000 0123 456}",
        "Austrian {IBAN|AT611904300234573201} confirmed",
        "Norway {IBAN|NO93 8601 1117 947}",
        "Polish IBAN {IBAN|PL61109010140000071219812874}",
        "Swedish {IBAN|SE45 5000 0000 0583 9825 7466} paid",
    ],
    "IP": [
        "Request from {IP|192.168.1.20} was blocked.",
        "客户端IP：{IP|10.0.0.1}，时间 12:30",
        "ssh root@host -p 22 # host is {IP|203.0.113.45}",
        "upstream {IP|172.16.254.1}:8080 timed out",
        "IPv6 {IP|2001:db8:85a3::8a2e:370:7334} seen",
        "link-local {IP|fe80::1ff:fe23:4567:890a} on eth0",
        "登录地址 {IP|8.8.8.8}",
        "loopback {IP|::1} and {IP|127.0.0.1}",
        "mapped {IP|::ffff:192.0.2.128} address",
        "client={IP|198.51.100.7} status=403",
        "来自 {IP|2408:8207:2450:1c40::25} 的访问",
        "gateway {IP|100.64.0.1}.",
    ],
    "CN_ID": [
        "身份证号：{CN_ID|11010519491231002X}",
        "Applicant ID {CN_ID|440106199912311239} verified.",
        "证件号码 {CN_ID|110105199003071239}，姓名略",
        "身份证{CN_ID|310115198511231230}已实名",
        "id_number={CN_ID|440304199212051235}",
        "用户 {CN_ID|510107197808151234} 认证通过",
        "{CN_ID|330106199502281238} 为乘车人证件",
        "ID: {CN_ID|420102200001011231}.",
        "证件 {CN_ID|610113198806301230} 与 {CN_ID|370202197310111232} 不符",
        "持证人{CN_ID|320583200109151232}",
        "身份证号码{CN_ID|210102196607041234}，有效期长期",
        "lower x: {CN_ID|11010519491231002x}",
    ],
    "URL_CREDENTIALS": [
        "DATABASE_URL=postgres://{URL_CREDENTIALS|admin:s3cretPass}@db.example.com:5432/app",
        "连接串 mysql://{URL_CREDENTIALS|root:123456}@{IP|10.1.2.3}/db",
        "clone https://{URL_CREDENTIALS|deploy:ghp_abcDEF123}@github.com/org/repo.git",
        "redis://{URL_CREDENTIALS|:hunter2}@cache.internal:6379/0",
        "ftp://{URL_CREDENTIALS|anonymous:guest}@ftp.example.org/pub",
        "amqp://{URL_CREDENTIALS|user:pa%40ss}@mq.example.com",
        "代理 http://{URL_CREDENTIALS|proxyuser:proxypass}@proxy.corp:3128",
        "mongodb+srv://{URL_CREDENTIALS|app:Zx9!q}@cluster0.mongodb.net/test",
        "https://{URL_CREDENTIALS|token}@api.example.com/v1",
        "smtp://{URL_CREDENTIALS|mailer:m41ler}@smtp.example.com:587",
        "sftp://{URL_CREDENTIALS|backup:b4ckup}@files.example.com/daily",
    ],
}

# Each must yield no finding at all.
HARD_NEGATIVES = [
    "The meeting is on 2023-10-05 at 14:30.",
    "日志时间 2026-12-01 23:21:32 INFO started",
    "Invoice date 05.10.2023, due 2023/11/05.",
    "2023年10月5日发布",
    "Price: ¥1,299.00 (was $4,999.99)",
    "售价1299元，优惠 200 元",
    "Total USD 12,345,678.90 transferred",
    "订单号 2023100512345678 已发货",
    "Order #4111111111111112 shipped",  # 16 digits, fails Luhn
    "订单编号：6222021234567890123 处理中",  # 19 digits, fails Luhn
    "tracking 1Z999AA10123456784",
    "运单号 SF1234567890123",
    "ISBN 978-7-111-54742-6",
    "ISBN 0-306-40615-2 (paperback)",
    "书号 9787111547426",
    "Upgrade to v1.2.3 now",
    "Windows version 10.0.19041.1 build",
    "release 2.1.0.3 is out",
    "Chrome/120.0.6099.109 Safari/537.36",
    "numpy==1.24.3 and lodash@4.17.21",
    "std::vector<int> v; Foo::Bar::baz()",
    "MAC 00:1A:2B:3C:4D:5E on port 3",
    "ratio 16:9 at 10:30:45",
    "身份证 110105194912310021 校验失败",  # wrong check character
    "ID 110105199002301234 invalid date",  # 30 February
    "流水号 20231005120000123456",
    "IBAN DE89 3704 0044 0532 0130 01 (typo)",  # fails mod 97
    "serial SN 2023-1005-8888",
    "invoice INV-2023-000123",
    "Years 2019-2023 were busy",
    "resolution 1920x1080, pi 3.14159",
    "坐标 39.9042, 116.4074",
    "客服电话 95588 转人工",
    "batch 12 345 678 items",
    "version 1.2.3.4 released",
    "timestamp 1701475200123",
    "room 1205, floor 12, building 3",
    "build 20231005.1 passed",
    "temperature -12.5 to 38.2",
    "SKU 4006381333931 in stock",  # an EAN-13 barcode
    "the user@ sign alone",
    "余额 ¥13800000000 元",
    "Order #4111111111111111 shipped",  # passes Luhn, but named as an order number
    "订单号：6200000000000005，运单号 13812345678",
    "GET /api/orders/5105105105105100 200",
    "transaction id 11010519491231002X",
    "batch 12345678901 queued",  # a valid US number with trunk 1 would need to be written as one
]


def parse(marked: str) -> tuple[str, list[tuple[str, int, int]]]:
    """Plain text and gold spans of a marked sentence."""
    out, spans, pos = [], [], 0
    for m in MARK.finditer(marked):
        out.append(marked[pos:m.start()])
        start = sum(map(len, out))
        out.append(m.group(2))
        spans.append((m.group(1), start, start + len(m.group(2))))
        pos = m.end()
    out.append(marked[pos:])
    return "".join(out), spans


def labelled() -> list[tuple[str, list[tuple[str, int, int]]]]:
    """Every sentence (positives of all types, then the hard negatives) with its gold spans."""
    items = [parse(s) for sents in POSITIVES.values() for s in sents]
    return items + [(s, []) for s in HARD_NEGATIVES]
