"""Tests for probed.expfmt: the exposition parser, series selection and aggregation.

Ground truth comes from outside the parser: prometheus/common's parser cases (ok/err, with the
Go parser's error line), the OpenMetrics conformance suite (shouldParse), prometheus_client's
expected outputs, and values read by hand from the real vLLM and llama.cpp captures.
"""

import json
import math
import random
import re
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from probed.expfmt import (AGGREGATIONS, EXPFMT_MAX_KEPT_CHARS, EXPFMT_MAX_LINE_BYTES,
                           EXPFMT_MAX_SERIES, ExpositionError, ExpositionTooBig, Selector,
                           SeriesSelector, aggregate, parse_samples, parse_selector, select_series)
from probed.exprules import EXPFMT_MAX_TRACKED_SERIES

METRICS = Path(__file__).resolve().parent / "fixtures" / "metrics"
PC_DIR, OM_DIR = METRICS / "prometheus_common", METRICS / "openmetrics_testdata"
VLLM = (METRICS / "real" / "vllm_inferstack-real.txt").read_bytes()
LLAMACPP = (METRICS / "real" / "llamacpp_llamesh-testdata.txt").read_bytes()
EDGE_TEXT = (METRICS / "exposition_edge_cases.txt").read_text(encoding="utf-8")
WAITING_0 = b'vllm:num_requests_waiting{engine="0",model_name="qwen2.5-1.5b"} '

PC_INDEX = json.loads((PC_DIR / "INDEX.json").read_text())
PC_UTF8_OK = ("err_41.txt", "err_42.txt")  # errors only under legacy (non-UTF-8) name rules
PC_OK = sorted(e["file"] for e in PC_INDEX if e["file"].startswith("ok_")) + list(PC_UTF8_OK)
PC_ERR = [e for e in PC_INDEX if e["file"].startswith("err_") and e["file"] not in PC_UTF8_OK]
OM_SHOULD = {row.split("\t")[0]: row.split("\t")[1].strip() == "True"
             for row in (OM_DIR / "INDEX.tsv").read_text().splitlines() if row.strip()}

# OpenMetrics cases the suite calls invalid that are accepted on purpose. Each needs several
# samples of one histogram (or its label sets) compared with each other; a probe reads single
# series, and the per-sample rules (counts >= 0, le/quantile, suffixes, exemplars) still apply.
OM_ACCEPTED = {
    "bad_counter_values_9.txt": "histogram has a _sum although a bucket has a negative le",
    "bad_counter_values_13.txt": "negative gauge-histogram _gsum without any negative bucket",
    "bad_grouping_or_ordering_0.txt": "label sets of one histogram interleaved",
    "bad_grouping_or_ordering_2.txt": "label sets of one gauge histogram interleaved",
    "bad_histograms_0.txt": "histogram _sum without buckets",
    "bad_histograms_1.txt": "histogram _sum without _count",
    "bad_histograms_2.txt": "histogram _count without _sum",
    "bad_histograms_3.txt": "histogram with negative buckets and a _sum",
    "bad_histograms_6.txt": "gauge histogram _gsum without buckets",
    "bad_histograms_7.txt": "negative gauge-histogram _gsum without any negative bucket",
    "bad_histograms_8.txt": "gauge histogram _gsum without _gcount",
    "bad_histograms_9.txt": "buckets not in increasing le order",
    "bad_histograms_10.txt": "bucket counts not cumulative",
    "bad_histograms_11.txt": "_count differs from the +Inf bucket",
    "bad_histograms_13.txt": "_count before the buckets and differs from the +Inf bucket",
    "bad_histograms_14.txt": "gauge histogram _gcount without _gsum",
}
OM_VALID = sorted(c for c, ok in OM_SHOULD.items() if ok)
OM_REJECTED = sorted(c for c, ok in OM_SHOULD.items() if not ok and c not in OM_ACCEPTED)
SUFFIXES = ("_total", "_created", "_bucket", "_count", "_sum", "_gcount", "_gsum", "_info")
VLLM_SELECTORS = [parse_selector(s) for s in (
    "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")]
_NAME_RE = re.compile(r'^[ \t]*(?:#[ \t]*(?:HELP|TYPE|UNIT)[ \t]+)?([a-zA-Z_:][a-zA-Z0-9_:]*)'
                      r'|"((?:[^"\\\n]|\\.)*)"[ \t]*[,}]', re.M)

Samples = List[Tuple[str, Dict[str, str], float, Optional[float]]]


def names_in(text: str) -> List[str]:
    """Every metric name a body mentions (bare, in metadata, or quoted inside braces)."""
    found = set()
    for m in _NAME_RE.finditer(text):
        name = m.group(1) or m.group(2)
        if name:
            found.add(re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)), name))
    return sorted(found)


def every_name(body: bytes) -> List[Selector]:
    return [Selector(n) for n in names_in(body.decode("utf-8", "replace"))]


def same(a: object, b: object) -> bool:
    """Equality where NaN equals NaN (through repr)."""
    return repr(a) == repr(b)


def expected_selection(samples: Samples, name: str) -> List[Tuple[Dict[str, str], float]]:
    """What select_series must return for a bare name, computed from a full parse."""
    series = {}  # type: Dict[Tuple[Tuple[str, str], ...], Tuple[Dict[str, str], float]]
    for sample_name, labels, value, _ in samples:
        if sample_name == name:
            series[tuple(sorted(labels.items()))] = (labels, value)
    return list(series.values())


def values(body: bytes, selector: str, openmetrics: Optional[bool] = None) -> List[float]:
    return [v for _, v in select_series(body, [parse_selector(selector)], openmetrics)[0]]


def one(body: bytes, selector: str, openmetrics: Optional[bool] = None) -> float:
    got = values(body, selector, openmetrics)
    assert len(got) == 1, (selector, got)
    return got[0]


def rejects(body: bytes, openmetrics: Optional[bool] = None) -> int:
    with pytest.raises(ExpositionError) as info:
        list(parse_samples(body, openmetrics))
    return info.value.lineno


def widen_engines(body: bytes, engines: int) -> bytes:
    """The data-parallel shape: every engine="0" sample line repeated for engines 0..n-1."""
    out = []  # type: List[bytes]
    for line in body.split(b"\n"):
        copies = engines if b'engine="0"' in line and not line.startswith(b"#") else 1
        out.extend(line.replace(b'engine="0"', b'engine="%d"' % i) for i in range(copies))
    return b"\n".join(out)


# ---- conformance suites ----------------------------------------------------------------------

@pytest.mark.parametrize("name", PC_OK)
def test_prometheus_common_ok_cases_parse_every_sample_line(name: str) -> None:
    text = (PC_DIR / name).read_text(encoding="utf-8")
    sample_lines = [s for s in map(str.strip, text.splitlines()) if s and not s.startswith("#")]
    assert len(list(parse_samples(text.encode()))) == len(sample_lines)


@pytest.mark.parametrize("entry", PC_ERR, ids=[e["file"] for e in PC_ERR])
def test_prometheus_common_err_cases_rejected_at_the_go_parsers_line(entry: Dict[str, str]) -> None:
    body = (PC_DIR / entry["file"]).read_bytes()
    go_line = int(re.search(r"line (\d+)", entry["expect"]).group(1))
    assert rejects(body) == go_line
    if entry["file"] != "err_00.txt" and not body.endswith(b"\n"):
        assert rejects(body + b"\n") == go_line  # its own fault, not only the missing last LF
    with pytest.raises(ExpositionError):
        select_series(body, every_name(body))


def test_prometheus_common_values_match_the_go_test_expectations() -> None:
    ok_02 = (PC_DIR / "ok_02.txt").read_bytes()
    assert select_series(ok_02, [parse_selector('name{labelname="val2"}')])[0] == [
        ({"labelname": "val2", "basename": 'base"v\\al\nue'}, 0.23)]
    assert values(ok_02, "name2") == [math.inf, -math.inf]
    assert math.isnan(one(ok_02, 'name{labelname="val1"}'))
    ok_03 = (PC_DIR / "ok_03.txt").read_bytes()
    assert one(ok_03, 'my_summary_sum{n1="val2"}') == 8.0  # "08"
    assert one(ok_03, 'another_summary{quantile=".3"}') == -1.2
    assert one(ok_03, "decoy") == -1.0
    assert one((PC_DIR / "ok_09.txt").read_bytes(), '{"my\\"noncompliant\\nmetric\\\\"}') == 1.0
    ok_12 = (PC_DIR / "ok_12.txt").read_bytes()
    assert one(ok_12, 'request_duration_microseconds_bucket{le="172.8"}') == 1524.8


@pytest.mark.parametrize("case", OM_VALID)
def test_openmetrics_valid_cases_parse(case: str) -> None:
    body = (OM_DIR / case).read_bytes()
    explicit = list(parse_samples(body, openmetrics=True))
    assert same(explicit, list(parse_samples(body)))  # detected by the final '# EOF'
    assert len(explicit) == sum(1 for s in body.split(b"\n") if s and not s.startswith(b"#"))


@pytest.mark.parametrize("case", OM_REJECTED)
def test_openmetrics_invalid_cases_rejected(case: str) -> None:
    body = (OM_DIR / case).read_bytes()
    rejects(body, openmetrics=True)
    with pytest.raises(ExpositionError):
        select_series(body, every_name(body), openmetrics=True)


def test_openmetrics_invalid_cases_accepted_are_exactly_the_listed_ones() -> None:
    accepted = set()
    for case, ok in OM_SHOULD.items():
        try:
            list(parse_samples((OM_DIR / case).read_bytes(), openmetrics=True))
        except ExpositionError:
            continue
        if not ok:
            accepted.add(case)
    assert accepted == set(OM_ACCEPTED)


ALL_FIXTURES = ([(p, False) for p in sorted(PC_DIR.glob("*.txt"))]
                + [(p, True) for p in sorted(OM_DIR.glob("*.txt"))]
                + [(p, None) for p in sorted((METRICS / "client_python").glob("*.txt"))]
                + [(p, None) for p in sorted((METRICS / "real").glob("*.txt"))]
                + [(METRICS / n, None) for n in (
                    "sglang_docs_production_metrics.txt", "prometheus_docs_exposition_example.txt",
                    "triton_docs_first_response_histogram_ILLUSTRATIVE.txt")])


@pytest.mark.parametrize("path,om", ALL_FIXTURES, ids=[p.name for p, _ in ALL_FIXTURES])
def test_select_series_agrees_with_the_full_parse(path: Path, om: Optional[bool]) -> None:
    body, selectors = path.read_bytes(), every_name(path.read_bytes())
    try:
        full = list(parse_samples(body, om))
    except ExpositionError as exc:
        with pytest.raises(ExpositionError) as again:
            select_series(body, selectors, om)
        assert str(again.value) == str(exc)
        return
    got = select_series(body, selectors, om)
    for selector, series in zip(selectors, got):
        assert same(series, expected_selection(full, selector.name)), selector.name
    assert sum(len(s) for s in got) > 0 or not full


# ---- values against independent ground truth -------------------------------------------------

# Read by hand from real/vllm_inferstack-real.txt (prometheus_client's parser also finds 420).
VLLM_VALUES = [
    ('vllm:num_requests_running{engine="0",model_name="qwen2.5-1.5b"}', 0.0),
    ('vllm:engine_sleep_state{sleep_state="awake"}', 1.0),
    ('vllm:engine_sleep_state{sleep_state="weights_offloaded"}', 0.0),
    ("vllm:prefix_cache_queries_total", 530.0),
    ("vllm:generation_tokens_total", 584.0),
    ('vllm:request_success_total{finished_reason="length"}', 10.0),
    ('vllm:time_to_first_token_seconds_bucket{le="0.06"}', 9.0),
    ('vllm:time_to_first_token_seconds_bucket{le="+Inf"}', 10.0),
    ("vllm:time_to_first_token_seconds_sum", 1.4721317291259766),
    ("vllm:time_to_first_token_seconds_created", 1.789901963353783e+09),
    ("vllm:e2e_request_latency_seconds_sum", 10.448294162750244),
    ("vllm:request_prefill_kv_computed_tokens_sum", 98.0),
    ('vllm:cache_config_info{num_gpu_blocks="20184"}', 1.0),
    ("process_start_time_seconds", 1.78990180866e+09),
    ("process_max_fds", 1.048576e+06),
    ('python_gc_objects_collected_total{generation="1"}', 9452.0),
    ('http_requests_total{handler="/v1/chat/completions"}', 10.0),
    ('http_request_size_bytes_sum{handler="/v1/chat/completions"}', 2729.0),
]
LLAMACPP_VALUES = [
    ("llamacpp:prompt_tokens_total", 191651.0),
    ("llamacpp:prompt_tokens_cached_total", 7.77887e+06),
    ("llamacpp:n_tokens_max", 78552.0),
    ("llamacpp:predicted_tokens_seconds", 51.1082),
    ("llamacpp:requests_processing", 0.0),
    ("llamacpp:n_busy_slots_per_decode", 1.0),
]


@pytest.mark.parametrize("selector,value", VLLM_VALUES)
def test_real_vllm_values(selector: str, value: float) -> None:
    assert one(VLLM, selector) == value


@pytest.mark.parametrize("selector,value", LLAMACPP_VALUES)
def test_real_llamacpp_values(selector: str, value: float) -> None:
    assert one(LLAMACPP, selector) == value


def test_real_bodies_sample_counts() -> None:
    assert len(list(parse_samples(VLLM))) == 420
    assert len(list(parse_samples(LLAMACPP))) == 15


CD = {"a": "c", "b": "d"}
# prometheus_client tests/test_exposition.py: the metric each expected output was generated from.
CLIENT_PYTHON = [
    ("test_counter", "cc_total", {}, 1.0),
    ("test_counter", "cc_created", {}, 123.456),
    ("test_counter_total", "cc_total", {}, 1.0),
    ("test_counter_name_unit_append", "requests_total_total", {}, 1.0),
    ("test_counter_utf8", '{"utf8.cc_total"}', {}, 1.0),
    ("test_counter_utf8", '{"utf8.cc_created"}', {}, 123.456),
    ("test_gauge", "gg", {}, 17.0),
    ("test_nonnumber", "nonnumber", {}, 123.0),
    ("test_escaping", "cc", {"a": '\\x\n"'}, 1.0),
    ("test_unicode", "cc", {"l": "\u4500"}, 1.0),
    ("test_info", "ii_info", dict(CD, foo="bar"), 1.0),
    ("test_enum", 'ee{ee="bar"}', dict(CD, ee="bar"), 1.0),
    ("test_enum", 'ee{ee="foo"}', dict(CD, ee="foo"), 0.0),
    ("test_histogram", 'hh_bucket{le="0.025"}', {"le": "0.025"}, 0.0),
    ("test_histogram", 'hh_bucket{le="0.05"}', {"le": "0.05"}, 1.0),
    ("test_histogram", "hh_count", {}, 1.0),
    ("test_histogram", "hh_sum", {}, 0.05),
    ("test_histogram", "hh_created", {}, 123.456),
    ("test_gaugehistogram", 'gh_bucket{le="1.0"}', {"le": "1.0"}, 4.0),
    ("test_gaugehistogram", "gh_gcount", {}, 5.0),
    ("test_gaugehistogram", "gh_gsum", {}, 7.0),
    ("test_summary", "ss_count", CD, 1.0),
    ("test_summary", "ss_sum", CD, 17.0),
    ("test_summary", "ss_created", CD, 123.456),
]


@pytest.mark.parametrize("case,selector,labels,value", CLIENT_PYTHON)
def test_client_python_expected_outputs(case: str, selector: str, labels: Dict[str, str],
                                        value: float) -> None:
    body = (METRICS / "client_python" / (case + ".txt")).read_bytes()
    assert select_series(body, [parse_selector(selector)])[0] == [(labels, value)]


def test_client_python_timestamps_come_out_in_seconds() -> None:
    body = (METRICS / "client_python" / "test_timestamp.txt").read_bytes()
    stamps = {labels["foo"]: ts for _, labels, _, ts in parse_samples(body)}
    assert stamps == {"a": 123.456, "b": -123.456, "c": 123.0, "d": 123.456, "e": 123.0, "f": 123.0}


def test_sglang_capture_with_sum_before_buckets() -> None:
    body = (METRICS / "sglang_docs_production_metrics.txt").read_bytes()
    assert one(body, "sglang:num_queue_reqs") == 2826.0
    assert one(body, "sglang:time_to_first_token_seconds_sum") == 2.3518979474117756e+06
    assert one(body, "sglang:time_to_first_token_seconds_count") == 11008.0
    assert one(body, 'sglang:time_to_first_token_seconds_bucket{le="0.06"}') == 3.0


def test_vllm_doc_captures_parse_once_the_elision_lines_are_dropped() -> None:
    for name in ("vllm_docs_design_metrics_example_ELIDED.txt",
                 "vllm_docs_usage_metrics_iteration_tokens_ELIDED.txt"):
        raw = (METRICS / name).read_bytes()
        rejects(raw)  # "..." is not exposition
        body = b"".join(line for line in raw.splitlines(True) if line.strip() != b"...")
        assert list(parse_samples(body))
    assert one(body, 'vllm:iteration_tokens_total_bucket{le="512.0"}') == 3.0
    cache_config = METRICS / "vllm_docs_design_metrics_cache_config_info_ELIDED.txt"
    assert rejects(cache_config.read_bytes()) == 3  # "...}" inside the label set


def test_prometheus_docs_example_rejects_the_valueless_line_and_parses_without_it() -> None:
    raw = (METRICS / "prometheus_docs_exposition_example.txt").read_bytes()
    assert rejects(raw) == 10  # {"my.dotted.metric", "error.message"="Not Found"} has no value
    body = b"".join(line for line in raw.splitlines(True) if not line.startswith(b'{"my.dotted'))
    assert select_series(body, [parse_selector("msdos_file_access_time_seconds")])[0] == [
        ({"path": "C:\\DIR\\FILE.TXT", "error": 'Cannot find file:\n"FILE.TXT"'}, 1458255915.0)]
    assert one(body, 'rpc_duration_seconds{quantile="0.99"}') == 76656.0
    assert [s[3] for s in parse_samples(body) if s[0] == "something_weird"] == [-3982.045]


def test_triton_illustrative_histogram_parses_as_untyped_samples() -> None:
    body = (METRICS / "triton_docs_first_response_histogram_ILLUSTRATIVE.txt").read_bytes()
    assert one(body, 'nv_inference_first_response_histogram_ms{le="500"}') == 30.0
    assert one(body, "nv_inference_first_response_histogram_ms_count") == 37.0


# ---- exposition_edge_cases.txt ---------------------------------------------------------------

INF = math.inf
# (context lines, not from the file; lines copied verbatim from the file; OpenMetrics?; expected
# samples (name, labels, value, timestamp) or the line number of the ExpositionError).
EDGE_CASES = [
    ([], [r'msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:'
          r'\n\"FILE.TXT\""} 1.458255915e9'], False,
     [("msdos_file_access_time_seconds",
       {"path": "C:\\DIR\\FILE.TXT", "error": 'Cannot find file:\n"FILE.TXT"'},
       1458255915.0, None)]),
    ([], [r'name {labelname="val2",basename="base\"v\\al\nue"} 0.23 1234567890'], False,
     [("name", {"labelname": "val2", "basename": 'base"v\\al\nue'}, 0.23, 1234567.89)]),
    ([], [r'cc{a="\\x\n\""} 1.0'], False, [("cc", {"a": '\\x\n"'}, 1.0, None)]),
    ([], [r'metric{label="\t"} 3.14'], False, 1),
    ([], [r'a_total{foo="b\\a\z"} 2'], True, [("a_total", {"foo": "b\\a\\z"}, 2.0, None)]),
    ([], ['metric{label="new', 'line"} 3.14'], False, 1),
    ([], ['a_total{foo="foo # bar"} 1', 'a_total{foo="} foo # bar # "} 1'], True,
     [("a_total", {"foo": "foo # bar"}, 1.0, None),
      ("a_total", {"foo": "} foo # bar # "}, 1.0, None)]),
    ([], ['a_total{foo="bar",bar="b{a}z"} 1'], True,
     [("a_total", {"foo": "bar", "bar": "b{a}z"}, 1.0, None)]),
    (["# TYPE a histogram"], ['a_bucket{le="1.0",foo="bar # "} 0 # {a="b",foo="bar # bar"} 0.5'],
     True, [("a_bucket", {"le": "1.0", "foo": "bar # "}, 0.0, None)]),
    ([], ['name2{labelname="val2"\t,basename   =   "basevalue2"\t\t} +Inf 54321',
          'name2{ labelname = "val1" , }-Inf'], False,
     [("name2", {"labelname": "val2", "basename": "basevalue2"}, INF, 54.321),
      ("name2", {"labelname": "val1"}, -INF, None)]),
    ([], ['something_weird{problem="division by zero"} +Inf -3982045'], False,
     [("something_weird", {"problem": "division by zero"}, INF, -3982.045)]),
    ([], ['a{foo="bar"} +Inf', 'a{foo="baz"} -Inf'], True,
     [("a", {"foo": "bar"}, INF, None), ("a", {"foo": "baz"}, -INF, None)]),
    ([], ["a 0000000000000000000000000000000000000000001.2e-1"], True, [("a", {}, 0.12, None)]),
    ([], ["a_total 9223372036854775808"], True, [("a_total", {}, 9.223372036854776e18, None)]),
    ([], ["foo 1_2"], False, 1),
    ([], ["foo 0x1p-3"], False, 1),
    ([], ["foo 0x1"], False, 1),
    ([], ["a 0b1"], False, 1),
    ([], ["a 0o1"], False, 1),
    ([], ['metric{label="bla"} blubb'], False, 1),
    ([], ['http_requests_total{method="post",code="400"}    3 1395066363000'], False,
     [("http_requests_total", {"method": "post", "code": "400"}, 3.0, 1395066363.0)]),
    ([], ['metric{label="bla"} 3.14 2.72'], False, 1),
    ([], ['metric{label="bla"} 3.14 2 3'], False, 1),
    ([], ['a_total{foo="3"} 1 1.1', 'a_total{foo="5"} 1 1.5e3'], True,
     [("a_total", {"foo": "3"}, 1.0, 1.1), ("a_total", {"foo": "5"}, 1.0, 1500.0)]),
    ([], ["a 1 NaN"], True, 1),
    ([], ["a 1 -Inf"], True, 1),
    ([], ['ts{foo="b"} 0.0 -123456'], False, [("ts", {"foo": "b"}, 0.0, -123.456)]),
    ([], [r"# HELP name two-line\n doc  str\\ing", ' # HELP  name2  \tdoc str"ing 2',
          "  #    TYPE    name2 gauge", "# Even that:",
          "# HELP line for non-existing metric will be ignored.", "# HELP", "# HELP my_summary",
          "# TYPE request_duration_microseconds gaugehistogram", "# UNIT cc_seconds seconds"],
     False, []),
    ([], ["# TYPE metric bla"], False, 1),
    ([], ["# TYPE met-ric"], False, 1),
    ([], ["# TYPE redis_connected_clients unknown"], True, []),
    ([], ["cc_total 1.0", "cc_created 123.456"], False,
     [("cc_total", {}, 1.0, None), ("cc_created", {}, 123.456, None)]),
    ([], ["foo_created  1520430000.123"], False, [("foo_created", {}, 1520430000.123, None)]),
    ([], ["foo_created  1520430000.123"], True, 1),  # the suite (bad_value_1) outranks the spec
    (["# TYPE metric histogram"], ['metric_bucket{le="bla"} 3.14'], False, 2),
    (["# TYPE request_duration_microseconds histogram"],
     ["request_duration_microseconds_count -2693"], False, 2),
    ([], ['sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2826.0'], False,
     [("sglang:num_queue_reqs", {"model_name": "meta-llama/Llama-3.1-8B-Instruct"}, 2826.0, None)]),
    ([], ['{"my.noncompliant.metric","label.name"="value"} 1',
          '{labelname="value", "my.noncompliant.metric"} 1'], False,
     [("my.noncompliant.metric", {"label.name": "value"}, 1.0, None),
      ("my.noncompliant.metric", {"labelname": "value"}, 1.0, None)]),
    ([], ['{"my.dotted.metric", "error.message"="Not Found"}'], False, 1),
    ([], ['metric{__name__="bla"} 3.14'], False, 1),
    ([], ['metric{label="bla",label="bla"} 3.14'], False, 1),
    ([], ["{} 3.14"], False, 1),
    ([], ["a_total{} 1", "no_labels{} 3", 'a_total{foo=""} 2'], False,
     [("a_total", {}, 1.0, None), ("no_labels", {}, 3.0, None),
      ("a_total", {"foo": ""}, 2.0, None)]),
    ([], ['a{a="1",b="2",} 1'], False, [("a", {"a": "1", "b": "2"}, 1.0, None)]),
    ([], ['a{a="1",b="2",} 1'], True, 1),
    (["# TYPE a counter"], ['a_total 0 123 # {a="b"} 0.5'], True, [("a_total", {}, 0.0, 123.0)]),
    (["# TYPE foo histogram"],
     ['foo_bucket{le="0.1"} 8 # {} 0.054',
      'foo_bucket{le="10"} 17 # {trace_id="oHg5SJYRHA0"} 9.8 1520879607.789'],
     True, [("foo_bucket", {"le": "0.1"}, 8.0, None), ("foo_bucket", {"le": "10"}, 17.0, None)]),
    (["# TYPE a histogram"], ['a_bucket{le="+Inf"} 1 #'], True, 2),
    (["# TYPE a stateset"], ['a{a="foo"} 1.0'], True, [("a", {"a": "foo"}, 1.0, None)]),
]


@pytest.mark.parametrize("context,lines,om,expected", EDGE_CASES)
def test_exposition_edge_cases(context: List[str], lines: List[str], om: bool,
                               expected: object) -> None:
    for line in lines:
        assert "LINE: " + line + "\n" in EDGE_TEXT, "not verbatim from the edge-case file"
    body = ("\n".join(context + lines) + "\n" + ("# EOF\n" if om else "")).encode()
    if isinstance(expected, int):
        assert rejects(body, om) == expected
    else:
        assert same(list(parse_samples(body, om)), expected)


# ---- selection -------------------------------------------------------------------------------

ALL_STATES = ["awake", "weights_offloaded", "discard_all"]


@pytest.mark.parametrize("selector,states", [
    ('vllm:engine_sleep_state{sleep_state="awake"}', ["awake"]),
    ('vllm:engine_sleep_state{sleep_state!="awake"}', ["weights_offloaded", "discard_all"]),
    ('vllm:engine_sleep_state{sleep_state=~"awake|discard_all"}', ["awake", "discard_all"]),
    ('vllm:engine_sleep_state{sleep_state!~"w.*"}', ["awake", "discard_all"]),
    ('vllm:engine_sleep_state{sleep_state=~"awa"}', []),  # anchored: no substring match
    ('vllm:engine_sleep_state{sleep_state!~"wake"}', ALL_STATES),
    ('vllm:engine_sleep_state{model_name="qwen2.5-1.5b",engine=~"0|1",sleep_state=~".*_.*"}',
     ["weights_offloaded", "discard_all"]),
    ('vllm:engine_sleep_state{absent=""}', ALL_STATES),  # a missing label equals ""
    ('vllm:engine_sleep_state{absent!=""}', []),
    ('{"vllm:engine_sleep_state", sleep_state="awake"}', ["awake"]),
    ('{__name__="vllm:engine_sleep_state",sleep_state=\'awake\'}', ["awake"]),
])
def test_selector_matchers(selector: str, states: List[str]) -> None:
    series = select_series(VLLM, [parse_selector(selector)])[0]
    assert [labels["sleep_state"] for labels, _ in series] == states


def test_selecting_a_name_never_returns_neighbouring_names() -> None:
    full = list(parse_samples(VLLM))
    for name in ("vllm:num_requests_waiting", "vllm:prompt_tokens_total",
                 "vllm:prompt_tokens_created", "vllm:time_to_first_token_seconds_count",
                 "http_requests_total"):
        got = select_series(VLLM, [Selector(name), Selector(name + "_x")])
        assert got[0] and got[0] == expected_selection(full, name) and got[1] == []


def test_selection_finds_quoted_names_and_indented_lines() -> None:
    ok_07, ok_10 = (PC_DIR / "ok_07.txt").read_bytes(), (PC_DIR / "ok_10.txt").read_bytes()
    assert values(ok_07, '{"name.with.dots"}') == [0.23]  # tab-indented; the last one wins
    assert values(ok_10, '{"my.noncompliant.metric",labelname="value"}') == [1.0]
    assert values(b'  x{a="1"} 2\n\t{"x",a="2"} 3\n', 'x{a=~"1|2"}') == [2.0, 3.0]


def test_repeated_series_counts_once_with_its_last_value() -> None:
    body = (OM_DIR / "duplicate_timestamps_1.txt").read_bytes()
    assert select_series(body, [parse_selector("a")])[0] == [({"a": "1", "foo": "bar"}, 3.0),
                                                             ({"a": "2", "foo": "bar"}, 5.0)]


def test_engines_are_summed_and_counted_across_a_data_parallel_body() -> None:
    body = widen_engines(VLLM.replace(WAITING_0 + b"0.0", WAITING_0 + b"3.0"), 8)
    waiting, kv = select_series(body, [parse_selector("vllm:num_requests_waiting"),
                                       parse_selector('vllm:kv_cache_usage_perc{engine!="3"}')])
    assert [labels["engine"] for labels, _ in waiting] == [str(i) for i in range(8)]
    assert aggregate([v for _, v in waiting], "sum") == 24.0
    assert aggregate([v for _, v in kv], "count") == 7.0


def test_crlf_bodies_give_the_same_results() -> None:
    crlf = VLLM.replace(b"\n", b"\r\n")
    assert same(select_series(crlf, VLLM_SELECTORS), select_series(VLLM, VLLM_SELECTORS))
    assert same(list(parse_samples(crlf)), list(parse_samples(VLLM)))
    om = (OM_DIR / "histogram_exemplars.txt").read_bytes()
    assert same(list(parse_samples(om.replace(b"\n", b"\r\n"))), list(parse_samples(om)))


def test_openmetrics_detection_and_override() -> None:
    body = b"a 1 1\n# EOF\n"
    assert list(parse_samples(body)) == [("a", {}, 1.0, 1.0)]  # OpenMetrics: seconds
    assert list(parse_samples(body, openmetrics=False)) == [("a", {}, 1.0, 0.001)]  # text: ms
    assert rejects(b"a 1\n", openmetrics=True) == 1


def test_text_format_quirks_of_the_go_parser() -> None:
    empty_help = b"# HELP a \n# HELP a real help\na 1\n"  # an empty HELP is ignored
    assert list(parse_samples(empty_help)) == [("a", {}, 1.0, None)]
    late_help = b"a 1\n# HELP a after its samples is fine\n"
    assert list(parse_samples(late_help)) == [("a", {}, 1.0, None)]
    assert list(parse_samples(b"a 1 9223372036854775807\n"))[0][3] == 9223372036854775.807
    assert rejects(b"a 1 9223372036854775808\n") == 1  # int64 milliseconds
    assert rejects(b"a 1 -99999999999999999999\n") == 1


def test_openmetrics_framing_errors_say_what_is_wrong() -> None:
    with pytest.raises(ExpositionError, match="line 3: text after '# EOF'"):
        list(parse_samples(b"a 1\n# EOF\nb 2\n", openmetrics=True))
    with pytest.raises(ExpositionError, match="line 2: missing '# EOF'"):
        list(parse_samples(b"a 1\na 2\n", openmetrics=True))
    with pytest.raises(ExpositionError, match="line 2: blank line"):
        list(parse_samples(b"a 1\n\n# EOF\n"))


@pytest.mark.parametrize("mtype", ["counter", "histogram", "gaugehistogram", "info"])
def test_openmetrics_bare_family_names_need_their_types_suffix(mtype: str) -> None:
    body = b"# TYPE a %s\na 1\n# EOF\n" % mtype.encode()
    with pytest.raises(ExpositionError, match="line 2: a: a sample of %s family 'a'" % mtype):
        list(parse_samples(body))
    assert list(parse_samples(body, openmetrics=False)) == [("a", {}, 1.0, None)]


def test_errors_are_value_errors_that_name_the_line() -> None:
    with pytest.raises(ValueError) as info:
        select_series(VLLM + b"vllm:num_requests_waiting{engine=1} 5\n", VLLM_SELECTORS)
    assert isinstance(info.value, ExpositionError) and info.value.lineno == 593
    assert str(info.value).startswith("line 593: malformed label set ")
    assert str(ExpositionError(7, "x")) == "line 7: x"


# ---- what select_series validates (module docstring: validation model) ------------------------

@pytest.mark.parametrize("extra", [
    b'# TYPE other histogram\nother_bucket{le="bla"} 1\n',
    b'other{a="1",a="2"} 1\n',
    b"# HELP other x\n# HELP other y\n",
    b"other 1\n# TYPE other gauge\n",
    b'# HELP "other.x" a\n# HELP "other.x" b\n',
    b" # TYPE other gauge\n\t# TYPE other counter\n",
])
def test_rules_of_other_families_are_left_to_the_full_parse(extra: bytes) -> None:
    body = VLLM + extra
    assert rejects(body) > 592
    assert same(select_series(body, VLLM_SELECTORS), select_series(VLLM, VLLM_SELECTORS))


def test_select_series_never_rejects_what_the_full_parse_accepts() -> None:
    # Family a_sum (a summary) owns the name a_sum, which family `a` could own too: its quantile
    # lines are read for selector "a", its a_sum_count line is not, and that gap is no error.
    body = (b'# TYPE a_sum summary\na_sum{quantile="0.5"} 1\na_sum_count 2\n'
            b'a_sum{quantile="0.9"} 1\n# EOF\n')
    assert len(list(parse_samples(body))) == 3
    assert select_series(body, [Selector("a")]) == [[]]
    assert values(body, "a_sum") == [1.0, 1.0]


def test_every_rule_covers_the_whole_selected_family() -> None:
    bucket = b'vllm:time_to_first_token_seconds_bucket{engine="0",le='
    body = VLLM.replace(bucket + b'"0.06"', bucket + b'"sixty"')
    line = rejects(body)
    for selector in ("vllm:time_to_first_token_seconds_count",
                     "vllm:time_to_first_token_seconds_created"):
        with pytest.raises(ExpositionError) as info:
            select_series(body, [parse_selector(selector)])
        assert info.value.lineno == line == 274


@pytest.mark.parametrize("bad", [
    b'other{a="1} 2\n' + WAITING_0 + b'9.0\n"} 1\n',  # an open quote
    b"other 1" + WAITING_0 + b"9.0\n",  # a lost line break
    b"<html><body>vllm:num_requests_waiting 9</body></html>\n",
    b'other{a="1"} 1 # {} 2\n',  # an exemplar in the text format
    b"\x00\x01\x02\n",
])
def test_a_broken_line_anywhere_rejects_the_body(bad: bytes) -> None:
    body = VLLM + bad
    with pytest.raises(ExpositionError) as info:
        select_series(body, VLLM_SELECTORS)
    assert info.value.lineno == rejects(body) == 593


def test_a_cut_short_body_never_yields_a_wrong_value() -> None:
    line = WAITING_0 + b"1234.5\n"
    body = VLLM.replace(WAITING_0 + b"0.0\n", line)
    start = body.index(line)
    cuts = list(range(start, start + len(line) + 2))
    cuts += random.Random(1).sample(range(len(body)), 200)
    for cut in cuts:
        try:
            got = select_series(body[:cut], VLLM_SELECTORS)[0]
        except ExpositionError:
            continue
        assert got in ([], [({"engine": "0", "model_name": "qwen2.5-1.5b"}, 1234.5)]), cut
    om = b"# TYPE a gauge\na 1234.5\n# EOF\n"
    for cut in range(len(om) - 1):
        with pytest.raises(ExpositionError):
            select_series(om[:cut], [Selector("a")], openmetrics=True)


# ---- fuzz ------------------------------------------------------------------------------------

FUZZ_BODIES = [
    (b"\n".join(VLLM.split(b"\n")[:140]) + b"\n", None),
    (LLAMACPP, None),
    ((PC_DIR / "ok_02.txt").read_bytes(), None),
    ((PC_DIR / "ok_03.txt").read_bytes(), None),
    ((PC_DIR / "ok_08.txt").read_bytes(), None),
    ((OM_DIR / "escaping.txt").read_bytes(), True),
    ((OM_DIR / "histogram_exemplars.txt").read_bytes(), True),
    ((OM_DIR / "timestamps.txt").read_bytes(), True),
]
FUZZ_SELECTORS = [Selector(n) for n in (
    "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "name", "name2", "my_summary",
    "a_total", "a_bucket", "llamacpp:n_tokens_max", '"gauge.name"')]
FUZZ_INSERTS = [b'"', b"\\", b"\n", b"{", b"}", b",", b"=", b" ", b"\t", b"#", b"\r", b"\x00",
                "\u00e9".encode(), b"\xff", b"e", b".", b"-", b"+", b"1", b"NaN", b"Inf", b" # {",
                b"_total", b"# TYPE x histogram\n"]


def _mutate(rng: random.Random, body: bytes) -> bytes:
    for _ in range(rng.randint(1, 3)):
        pos, op = rng.randrange(len(body) + 1), rng.randrange(6)
        if op == 0:
            body = body[:pos] + body[pos + rng.randint(1, 4):]
        elif op == 1:
            body = body[:pos] + rng.choice(FUZZ_INSERTS) + body[pos:]
        elif op == 2:
            body = body[:pos] + bytes([rng.randrange(256)]) + body[pos + 1:]
        elif op == 3:
            lines = body.split(b"\n")
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            body = b"\n".join(lines)
        elif op == 4:
            body = body[:pos]
        else:
            junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
            body = body[:pos] + junk + body[pos:]
    return body


def _selected_family_names() -> Set[str]:
    names = {s.name for s in FUZZ_SELECTORS}
    families = names | {n[:-len(x)] for n in names for x in SUFFIXES if n.endswith(x)}
    return {f + x for f in families for x in ("",) + SUFFIXES}


@pytest.mark.timeout(120)
def test_fuzzed_bodies_only_raise_exposition_error_and_agree_with_the_full_parse() -> None:
    rng, selected = random.Random(20240611), _selected_family_names()
    outcomes = {"accepted": 0, "rejected": 0, "skipped": 0}
    for i in range(900):
        original, om = FUZZ_BODIES[i % len(FUZZ_BODIES)]
        if i % 10:
            body = _mutate(rng, original)
        else:
            body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))
        error = None  # type: Optional[ExpositionError]
        try:
            full = list(parse_samples(body, om))  # anything but ExpositionError fails the test
        except ExpositionError as exc:
            assert exc.lineno >= 1 and str(exc).startswith("line %d: " % exc.lineno)
            full, error = [], exc
        try:
            got = select_series(body, FUZZ_SELECTORS, om)
        except ExpositionError:
            assert error is not None, body  # never stricter than the full parse
            outcomes["rejected"] += 1
            continue
        if error is None:
            assert same(got, [expected_selection(full, s.name) for s in FUZZ_SELECTORS]), body
            outcomes["accepted"] += 1
        else:  # the fast path accepted: the broken rule must lie outside every selected family
            lines = body.replace(b"\r\n", b"\n").split(b"\n")
            bad = lines[error.lineno - 1].decode("utf-8", "replace")
            assert not set(names_in(bad)) & selected, (bad, str(error))
            outcomes["skipped"] += 1
    assert min(outcomes.values()) > 0, outcomes


@pytest.mark.timeout(30)
@pytest.mark.parametrize("line", [
    b'a{b="c"' + b" " * 20000,
    b"a" + b" " * 20000 + b"x",
    b"{" * 20000,
    b"a{" + b'b="c",' * 5000 + b"} 1 x",
    b'{"a"' + b',"b"' * 5000 + b"} 1",
    b"# HELP" + b" " * 20000 + b"-",
    b'a{b="' + b"\\n" * 10000 + b" 1",
])
def test_pathological_lines_are_rejected_in_bounded_time(line: bytes) -> None:
    for om in (False, True):
        with pytest.raises(ExpositionError):
            select_series(line + b"\n" + (b"# EOF\n" if om else b""), [Selector("a")], om)


# ---- streamed selection (SeriesSelector) -----------------------------------------------------

def streamed(body: bytes, selectors: List[Selector], om: Optional[bool], sizes: List[int]
             ) -> object:
    """SeriesSelector fed `body` in pieces of the given sizes (cycled): its series, or the
    ExpositionError it raised."""
    selector, pos, i = SeriesSelector(selectors, om), 0, 0
    while pos < len(body):
        size = sizes[i % len(sizes)]
        selector.feed(body[pos:pos + size])
        pos, i = pos + size, i + 1
    try:
        return selector.close()
    except ExpositionError as exc:
        return exc


def whole(body: bytes, selectors: List[Selector], om: Optional[bool]) -> object:
    try:
        return select_series(body, selectors, om)
    except ExpositionError as exc:
        return exc


@pytest.mark.parametrize("path,om", ALL_FIXTURES, ids=[p.name for p, _ in ALL_FIXTURES])
def test_streamed_in_any_pieces_agrees_with_the_whole_body(path: Path, om: Optional[bool]) -> None:
    body, selectors = path.read_bytes(), every_name(path.read_bytes())
    expected = whole(body, selectors, om)
    for sizes in ([len(body) + 1], [1], [7, 1, 300], [4096]):
        got = streamed(body, selectors, om, sizes)
        if isinstance(expected, ExpositionError):
            assert isinstance(got, ExpositionError), (sizes, got)
        else:
            assert same(got, expected), sizes
        if om is None:  # told the format, a stream agrees too
            told = streamed(body, selectors, path.suffix == ".txt" and body.rstrip().endswith(
                b"# EOF"), sizes)
            assert isinstance(told, ExpositionError) == isinstance(expected, ExpositionError)


@pytest.mark.timeout(120)
def test_streamed_fuzzed_bodies_agree_with_the_whole_body() -> None:
    rng = random.Random(20261206)
    for i in range(600):
        original, om = FUZZ_BODIES[i % len(FUZZ_BODIES)]
        body = _mutate(rng, original)
        for choice in (om, None):
            expected = whole(body, FUZZ_SELECTORS, choice)
            got = streamed(body, FUZZ_SELECTORS, choice, [rng.randint(1, 200)])
            if isinstance(expected, ExpositionError):
                assert isinstance(got, ExpositionError), body
            else:
                assert same(got, expected), body


def test_a_streamed_bad_line_is_named_as_in_the_whole_body() -> None:
    body = VLLM + b'vllm:num_requests_waiting{engine=1} 5\n' + VLLM
    got = streamed(body, VLLM_SELECTORS, None, [1000])
    assert isinstance(got, ExpositionError) and got.lineno == 593, got
    assert str(got) == str(whole(body, VLLM_SELECTORS, None))


def test_invalid_utf8_in_a_later_piece_names_its_line_and_byte() -> None:
    body = VLLM + b'vllm:num_requests_waiting{engine="\xff"} 5\n'
    got = streamed(body, VLLM_SELECTORS, None, [999])
    assert isinstance(got, ExpositionError)
    assert str(got) == str(whole(body, VLLM_SELECTORS, None)) == (
        "line 593: invalid UTF-8 at byte %d" % (len(VLLM) + 34))


def test_an_openmetrics_only_body_is_told_by_its_last_line_when_streamed() -> None:
    exemplars = (OM_DIR / "histogram_exemplars.txt").read_bytes()
    assert exemplars.endswith(b"# EOF\n")
    undecided = streamed(exemplars, [Selector("a_bucket")], None, [5])
    assert same(undecided, whole(exemplars, [Selector("a_bucket")], True))
    assert not isinstance(undecided, ExpositionError) and undecided[0]
    cut = streamed(exemplars[:-len(b"# EOF\n")], [Selector("a_bucket")], None, [5])
    assert isinstance(cut, ExpositionError)  # exemplars are not text format
    after = streamed(exemplars + b"a 1\n", [Selector("a_bucket")], True, [5])
    assert isinstance(after, ExpositionError) and "text after '# EOF'" in str(after)


def test_a_refused_stream_is_settled_and_asks_for_no_more() -> None:
    selector = SeriesSelector(VLLM_SELECTORS, False)
    head = VLLM[:VLLM.index(b"\n", 1000) + 1]
    assert selector.feed(head)
    assert not selector.feed(b"<html>\n")
    assert selector.settled and not selector.feed(VLLM)
    with pytest.raises(ExpositionError, match="line %d: " % (head.count(b"\n") + 1)):
        selector.close()


def test_a_streamed_line_past_the_line_cap_is_refused() -> None:
    selector = SeriesSelector([Selector("a")], None)
    selector.feed(b"a 1\n")
    long = b'b{x="' + b"y" * EXPFMT_MAX_LINE_BYTES + b'"} 1\n'
    for start in range(0, len(long), 8192):
        selector.feed(long[start:start + 8192])
    with pytest.raises(ExpositionTooBig, match="line 2: line longer than %d bytes"
                       % EXPFMT_MAX_LINE_BYTES):
        selector.close()
    fits = b'b{x="' + b"y" * (EXPFMT_MAX_LINE_BYTES - 20) + b'"} 1\n'
    assert streamed(b"a 1\n" + fits, [Selector("a")], None, [8192]) == [[({}, 1.0)]]


def test_the_series_kept_per_selector_are_capped() -> None:
    series = b"".join(b'a{n="%d"} 1\n' % i for i in range(EXPFMT_MAX_SERIES))
    assert len(streamed(series, [Selector("a")], None, [65536])[0]) == EXPFMT_MAX_SERIES
    got = streamed(series + b'a{n="more"} 1\n', [Selector("a")], None, [65536])
    assert isinstance(got, ExpositionTooBig) and "a matches more than %d series" % (
        EXPFMT_MAX_SERIES) in str(got)
    repeated = series + series  # the same series again: no more kept
    assert len(streamed(repeated, [Selector("a")], None, [65536])[0]) == EXPFMT_MAX_SERIES
    narrowed = streamed(series + b'a{n="more"} 1\n', [parse_selector('a{n="7"}')], None, [999])
    assert narrowed == [[({"n": "7"}, 1.0)]]


def test_the_characters_kept_are_capped() -> None:
    value = "v" * 2000
    lines = b"".join(b'a{n="%d",x="%s"} 1\n' % (i, value.encode()) for i in range(600))
    got = streamed(lines, [Selector("a")], None, [65536])
    assert isinstance(got, ExpositionTooBig) and "more than %d characters" % (
        EXPFMT_MAX_KEPT_CHARS) in str(got)


def test_openmetrics_order_tracking_of_selected_families_is_capped() -> None:
    lines = b"".join(b'a{n="%d"} 1\n' % i for i in range(EXPFMT_MAX_TRACKED_SERIES + 1))
    got = streamed(lines + b"# EOF\n", [parse_selector('a{n="0"}')], True, [65536])
    assert isinstance(got, ExpositionTooBig) and "more than %d series" % (
        EXPFMT_MAX_TRACKED_SERIES) in str(got)


# ---- selectors and aggregation ---------------------------------------------------------------

@pytest.mark.parametrize("text,name,matchers", [
    ('vllm:num_requests_waiting{model_name="m",engine=~"0|1"}', "vllm:num_requests_waiting",
     (("model_name", "=", "m"), ("engine", "=~", "0|1"))),
    ('{"my.dotted.metric", code!="500"}', "my.dotted.metric", (("code", "!=", "500"),)),
    (' up { job = "a\\"b" , "odd.label" !~ \'x|y\' , } ', "up",
     (("job", "=", 'a"b'), ("odd.label", "!~", "x|y"))),
    ("up{}", "up", ()),
    ('x{"a.b"="\\n\\"\\\\"}', "x", (("a.b", "=", '\n"\\'),)),
])
def test_parse_selector_forms_and_round_trip(text: str, name: str,
                                             matchers: Tuple[Tuple[str, str, str], ...]) -> None:
    sel = parse_selector(text)
    assert (sel.name, sel.matchers) == (name, matchers)
    again = parse_selector(str(sel))
    assert (again.name, again.matchers) == (name, matchers)


@pytest.mark.parametrize("text,message", [
    ("", "no metric name"),
    ('{job="a"}', "no metric name"),
    ("up{job}", "needs an operator"),
    ('up{job="a"', "expected label"),
    ('up{job=="a"}', "expected label"),
    ('up{job="a" x="b"}', "expected label"),
    ('up{job=~"("}', "bad regular expression"),
    ('up{"a","b"}', "more than one metric"),
    ("up x", "unexpected"),
    ('up{job="a"}}', "unexpected"),
    ("0up", "unexpected"),
])
def test_parse_selector_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_selector(text)
    assert message in str(info.value)


def test_selector_objects_validate_their_matchers() -> None:
    with pytest.raises(ValueError):
        Selector("up", [("job", "==", "a")])
    with pytest.raises(ValueError):
        Selector("")
    assert Selector("up", [("job", "=~", "a.*")]).matches({"job": "abc"})
    assert not Selector("up", [("job", "=~", "a.*")]).matches({"job": "xabc"})


NAN = float("nan")


@pytest.mark.parametrize("how,data,expected", [
    ("sum", [1.0, 2.0, 3.5], 6.5), ("max", [1.0, 7.0, 3.0], 7.0), ("min", [4.0, -2.0, 3.0], -2.0),
    ("avg", [1.0, 2.0, 6.0], 3.0), ("count", [5.0, 5.0], 2.0), ("count", [], 0.0),
    ("sum", [], None), ("max", [], None), ("min", [], None), ("avg", [], None),
    ("max", [NAN, 2.0, 1.0], 2.0), ("min", [1.0, NAN], 1.0), ("max", [NAN], NAN),
    ("sum", [1.0, NAN], NAN), ("sum", [INF, 1.0], INF),
])
def test_aggregate(how: str, data: List[float], expected: Optional[float]) -> None:
    assert same(aggregate(data, how), expected)


def test_aggregate_rejects_unknown_functions() -> None:
    assert AGGREGATIONS == ("sum", "max", "min", "avg", "count")
    with pytest.raises(ValueError) as info:
        aggregate([1.0], "median")
    assert "median" in str(info.value) and "sum, max, min, avg, count" in str(info.value)
