"""The two-factory demo's helpers; the story itself is `demo/two-factory-demo`.

Each module does one job: `knobs` (the environment, read once), `api` (the
fleet API as any client sends it), `coordinators` (where the coordinator
lives and how each party reaches it: one class per mode), `processes` (the
daemons: start, freeze, kill, stop), `markers` (the evidence a job's command
leaves), `evidence` (what the coordinator recorded), `fleet` (the stage the
scenarios act on: enqueue, look, wait), `report` (timeline and verdicts) and
`harness` (exit codes, signals, clean-up). None of them imports the product:
the demo drives it through its commands and its API, as a user would.
"""
