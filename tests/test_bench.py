"""The latency harness: what it records."""
import time

import numpy as np
import pytest

from tfdeploy import bench


def test_settled_block_records_the_last_calls_of_the_settle_period():
    """Every call is made and timed by the same loop; the first call after a switch is
    never recorded; the recorded ones are the last ``block`` calls, at or after the end
    of the settle period."""
    calls = []

    def run(inputs):
        calls.append(time.perf_counter())
        time.sleep(0.001 * len(calls))  # each call slower than the one before

    s = bench.Settings(block=3, settle=0.05)
    started = time.perf_counter()
    recorded = bench.settled_block(run, None, s)
    assert len(recorded) == 3 and len(calls) >= 5
    assert recorded == sorted(recorded) and recorded[0] >= 0.001 * (len(calls) - 2)
    assert calls[-2] < started + s.settle  # the calls before the last ended before it

    slow = bench.Settings(block=4, settle=0.0)  # settled at once: still ``block`` calls
    calls.clear()
    assert len(bench.settled_block(run, None, slow)) == 4 and len(calls) == 5


class Counter:
    def __init__(self):
        self.done = 0

    def update(self, n):
        assert n >= 0
        self.done += n


def test_measure_reports_progress_in_runs_and_ends_each_variant_by_runs_or_seconds():
    """Round-robin variants all end near the end, so progress counts measured runs (a
    variant ended by its seconds counts as all its runs): it rises round by round and
    reaches the total exactly."""
    s = bench.Settings(warmup_runs=1, warmup_seconds=0.0, runs=20, seconds=0.05, block=5,
                       settle=0.0)
    seen = []
    bar = Counter()
    fast, slow = (lambda inputs: seen.append(bar.done)), (lambda inputs: time.sleep(0.005))
    stats = bench.measure({"fast": fast, "slow": slow}, None, s, bar)
    assert stats["fast"]["runs"] == 20  # ended by runs
    assert 5 <= stats["slow"]["runs"] < 20  # ended by its 0.05 s
    assert bar.done == s.runs * 2
    assert 0 < max(seen) < bar.done and seen == sorted(seen)


def test_bench_cli_refuses_non_positive_settings(capsys, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    assert bench.main([str(model), "--seconds=0"]) == 2
    assert "--seconds 0.0: must be positive" in capsys.readouterr().err
    assert bench.main([str(model), "--batch_sizes=1,0"]) == 2
    assert "--batch_sizes '1,0': must be positive" in capsys.readouterr().err


class Sleeper:
    """An artifact whose call sleeps ``ms_per_token`` per token of its input."""

    def __init__(self, name, ms_per_token):
        self.name, self.ms_per_token = name, ms_per_token

    def runner(self, threads):
        return lambda tokens: time.sleep(tokens * self.ms_per_token / 1e3)


def test_over_lengths_times_each_length_and_weights_by_its_share():
    s = bench.Settings(batch_sizes=(1,), warmup_runs=1, warmup_seconds=0.0, runs=5,
                       seconds=0.02, block=5, settle=0.0)
    shares = {16: 0.25, 48: 0.75}
    artifacts = [Sleeper("slow", 0.1), Sleeper("fast", 0.05)]
    by_length, mix = bench.over_lengths(artifacts, s, shares, reference="slow",
                                        make_inputs=lambda batch, seq: seq)
    assert sorted(by_length) == [16, 48]
    for name in ("slow", "fast"):
        at = {n: by_length[n][name]["batch_1"]["median_ms"] for n in shares}
        assert at[48] > at[16] >= 16 * dict(slow=0.1, fast=0.05)[name]
        assert mix[name]["batch_1"]["median_ms"] == pytest.approx(0.25 * at[16] + 0.75 * at[48])
    assert mix["slow"]["batch_1"]["ratio"] == 1.0
    assert 0.3 < mix["fast"]["batch_1"]["ratio"] < 0.8


def test_length_shares_are_the_padded_lengths_the_split_runs_at():
    from tfdeploy.data.pipeline import EncodedSplit

    class Plugin:
        def encode(self, examples, max_length):
            return {"input_ids": [np.ones(min(n, max_length), np.int32) for n in examples]}

    class Split:
        examples, labels = [3, 16, 17, 30, 40, 70], [0] * 6

    split = EncodedSplit(Plugin(), Split(), max_length=64, buckets=[16, 32, 128])
    assert split.length_shares() == {16: 2 / 6, 32: 2 / 6, 64: 2 / 6}
