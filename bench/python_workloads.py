#!/usr/bin/env python3
"""Python's side of bench/compare_python.py: the three pool workloads with
concurrent.futures and multiprocessing, one JSON object per line on stdout.

Standard library only. Process pools use the "fork" start method (the
fastest on Linux, and the default there before Python 3.14).

    python3 bench/python_workloads.py [--quick]

1. round_trip: submit one trivial task, wait for its result; median over many
   (2 workers, warmed up first).
2. map: 1,000,000 trivial tasks with 2 workers. ProcessPoolExecutor.map and
   multiprocessing.Pool.map with chunksize=1000; ThreadPoolExecutor.map
   (it has no chunks). Tasks per second, median of a few runs.
   ThreadPoolExecutor gets one run over 100,000 items (a tenth): at its
   10-50 k tasks/s a million would take up to 100 s, and its per-task cost
   does not depend on the length of the input.
3. replace: a task aborts its worker (1 worker). The dying task stamps
   CLOCK_MONOTONIC into shared memory first; times run from that stamp to the
   next task starting in a new worker and to its result in the caller.
   multiprocessing.Pool replaces the worker (the aborted task's result never
   arrives). ProcessPoolExecutor breaks for good (BrokenProcessPool): what is
   timed there is death -> BrokenProcessPool seen -> a new executor built ->
   its first result.
"""

import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time

FORK = mp.get_context("fork")
DEATH = None  # a shared int64: the dying task's CLOCK_MONOTONIC stamp (ns)


def square(x):
    return x * x


def stamp(_):
    return time.monotonic_ns()


def crash(_):
    DEATH.value = time.monotonic_ns()
    os.abort()


def emit(**fields):
    print(json.dumps(fields), flush=True)


def quantiles_us(samples_ns):
    s = sorted(samples_ns)

    def at(q):
        return s[round((len(s) - 1) * q)] / 1000.0

    return at(0.5), at(0.1), at(0.9)


def latency(variant, workload, samples_ns, **extra):
    median, p10, p90 = quantiles_us(samples_ns)
    emit(impl="python", variant=variant, workload=workload, n=len(samples_ns),
         median_us=round(median, 3), p10_us=round(p10, 3), p90_us=round(p90, 3), **extra)


def time_round_trips(call, iterations):
    for _ in range(iterations // 10):
        call()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        r = call()
        samples.append(time.perf_counter_ns() - t0)
        assert r == 9
    return samples


def round_trips(iterations):
    with cf.ThreadPoolExecutor(2) as ex:
        latency("ThreadPoolExecutor", "round_trip",
                time_round_trips(lambda: ex.submit(square, 3).result(), iterations))
    with cf.ProcessPoolExecutor(2, mp_context=FORK) as ex:
        latency("ProcessPoolExecutor(fork)", "round_trip",
                time_round_trips(lambda: ex.submit(square, 3).result(), iterations))
    with FORK.Pool(2) as pool:
        latency("multiprocessing.Pool(fork)", "round_trip",
                time_round_trips(lambda: pool.apply_async(square, (3,)).get(), iterations))


def time_map(variant, run_map, items, runs, note):
    expected = sum(x * x for x in range(items))
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        total = sum(run_map(items))
        seconds = time.perf_counter() - t0
        assert total == expected
        rates.append(items / seconds)
    rates.sort()
    emit(impl="python", variant=variant, workload="map", items=items, runs=runs,
         tasks_per_s=round(rates[len(rates) // 2]), best_tasks_per_s=round(rates[-1]), note=note)


def maps(items, runs):
    with cf.ProcessPoolExecutor(2, mp_context=FORK) as ex:
        list(ex.map(square, range(10_000), chunksize=1000))  # warm-up
        time_map("ProcessPoolExecutor(fork)", lambda n: ex.map(square, range(n), chunksize=1000),
                 items, runs, "chunksize=1000")
    with FORK.Pool(2) as pool:
        pool.map(square, range(10_000), chunksize=1000)
        time_map("multiprocessing.Pool(fork)", lambda n: pool.map(square, range(n), chunksize=1000),
                 items, runs, "chunksize=1000")
    with cf.ThreadPoolExecutor(2) as ex:
        list(ex.map(square, range(1000)))
        time_map("ThreadPoolExecutor", lambda n: ex.map(square, range(n)), items // 10, 1,
                 "no chunking; one run over a tenth of the items")


def replace_mp_pool(iterations):
    to_start, to_result = [], []
    pool = FORK.Pool(1)
    try:
        pool.apply_async(square, (3,)).get(timeout=60)
        for _ in range(iterations):
            DEATH.value = 0
            pool.apply_async(crash, (None,))  # never resolves: the task dies with its worker
            started = pool.apply_async(stamp, (None,)).get(timeout=60)
            got = time.monotonic_ns()
            died = DEATH.value
            assert 0 < died < started
            to_start.append(started - died)
            to_result.append(got - died)
    finally:
        # close()+join() would wait forever for the lost task (CPython #96062).
        pool.terminate()
    median, p10, p90 = quantiles_us(to_start)
    latency("multiprocessing.Pool(fork)", "replace", to_result,
            to_start_median_us=round(median, 3), to_start_p10_us=round(p10, 3),
            to_start_p90_us=round(p90, 3),
            note="worker replaced; the aborted task's result never arrives")


def replace_executor(iterations):
    to_broken, to_start, to_result = [], [], []
    ex = cf.ProcessPoolExecutor(1, mp_context=FORK)
    ex.submit(square, 3).result()
    for _ in range(iterations):
        DEATH.value = 0
        try:
            ex.submit(crash, None).result(timeout=60)
            raise AssertionError("the crash task returned")
        except cf.process.BrokenProcessPool:
            broken = time.monotonic_ns()
        died = DEATH.value
        # The executor is unusable now: a caller must build a new one.
        fresh = cf.ProcessPoolExecutor(1, mp_context=FORK)
        started = fresh.submit(stamp, None).result(timeout=60)
        got = time.monotonic_ns()
        assert 0 < died < started
        ex.shutdown(wait=True)
        ex = fresh
        to_broken.append(broken - died)
        to_start.append(started - died)
        to_result.append(got - died)
    ex.shutdown(wait=True)
    start_median, start_p10, start_p90 = quantiles_us(to_start)
    broken_median, _, _ = quantiles_us(to_broken)
    latency("ProcessPoolExecutor(fork)", "replace", to_result,
            to_start_median_us=round(start_median, 3), to_start_p10_us=round(start_p10, 3),
            to_start_p90_us=round(start_p90, 3), to_broken_median_us=round(broken_median, 3),
            note="breaks the pool (BrokenProcessPool): timed = death -> error seen -> "
                 "new executor -> its first result")


def main():
    global DEATH
    quick = "--quick" in sys.argv
    round_trip_n, map_items, map_runs, replace_n = (
        (500, 100_000, 1, 5) if quick else (5_000, 1_000_000, 3, 40))
    # Made before any pool, so every forked worker (and every replacement,
    # forked from this process) shares it.
    DEATH = FORK.RawValue("q", 0)
    emit(impl="python", variant="info", workload="info", python=platform.python_version(),
         start_method="fork", cpus=os.cpu_count())
    round_trips(round_trip_n)
    maps(map_items, map_runs)
    replace_mp_pool(replace_n)
    replace_executor(replace_n)


if __name__ == "__main__":
    main()
