"""The workshop kit: what an instructor runs around a class.

    labkit doctor                         # before class, on each machine: one line per check, then a verdict
    labkit export -o alice.json           # after the lessons, each student: runs and lesson figures, one file
    labkit report *.json -o class.html    # the instructor: everyone's runs and claims on one self-contained page

Each command is a thin CLI over one function: `doctor.run_checks`, `export.export`, `report.build`. Nothing here
is imported by `import labkit` or `labkit --help`: torch, pandas and plotly load inside those functions.
"""
