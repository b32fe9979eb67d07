"""Benchmark and soak runs for batchrunner, kept out of the installed package.

Run them from a checkout's root, with the test extra installed (`pip install -e '.[test]'`:
the SDK baseline needs `dashscope`). They use batchrunner as a library and through its CLI:

    python -m benchmarks.bench [--quick] [--only startup,S1,S2,S2b,S3] [--json PATH]
    python -m benchmarks.soak [--rows 20000] [--kills 10]

Modules: `bench` (command line), `table` (the printed table), `harness` (work folder, inputs,
child jobs), `scenarios` (S1, S2, S2b), `scale` (S3), `startup` (CLI start-up CPU),
`proc` (child processes and the simulator process), `sample` (rates seen by the simulator),
`data` (inputs and specs), `child` (the job / SDK child process), `soak`.
"""
