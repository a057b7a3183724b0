"""The latency harness: what it records."""
import time

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
